"""TI2V model inputs, checked against expectations worked out by hand from the original
pipeline's algorithm (centre crop → bilinear antialiased resize → 2x-1; per-frame mask viewed
as 4 channels x T' latent frames)."""
import pytest
import torch
import torch.nn.functional as F

from allegro.ti2v import center_crop_box, conditioning_indices, frame_mask, prepare_image


@pytest.mark.parametrize("size,target,box", [
    # square 1000x1000 to 720x1280 (ratio 0.5625): keep full width, 562 rows from row round(438/2)=219
    ((1000, 1000), (720, 1280), (219, 0, 562, 1000)),
    # portrait 1280x720 (HxW) to landscape: 405 rows of 720 (int(720*0.5625)), top round(875/2)=438
    ((1280, 720), (720, 1280), (438, 0, 405, 720)),
    # wider than the target: keep all rows, int(100/0.5625)=177 columns of 400, left round(223/2)=112
    ((100, 400), (720, 1280), (0, 112, 100, 177)),
    # same aspect: no crop
    ((360, 640), (720, 1280), (0, 0, 360, 640)),
    # one pixel
    ((1, 1), (720, 1280), (0, 0, 1, 1)),
])
def test_center_crop_box_by_hand(size, target, box):
    assert center_crop_box(*size, *target) == box


def test_prepare_image_crops_resizes_and_scales():
    image = torch.rand(90, 60, 3)            # portrait image, landscape 32x48 target
    out = prepare_image(image, 32, 48)
    assert out.shape == (3, 32, 48)
    # by hand: ratio 2/3 → 40 rows of 60 starting at row round(50/2)=25
    crop = image[25:65].movedim(-1, 0)[None]
    expected = F.interpolate(crop, size=(32, 48), mode="bilinear", align_corners=True, antialias=True)[0] * 2 - 1
    assert torch.equal(out, expected)
    assert out.min() >= -1 and out.max() <= 1


def test_prepare_image_drops_alpha_and_handles_one_pixel():
    rgba = torch.rand(20, 30, 4)
    assert torch.equal(prepare_image(rgba, 16, 16), prepare_image(rgba[..., :3], 16, 16))
    one = torch.tensor([[[1.0, 0.0, 0.5]]])
    out = prepare_image(one, 16, 32)
    assert torch.allclose(out, torch.tensor([1.0, -1.0, 0.0]).view(3, 1, 1).expand(3, 16, 32))


def hand_mask(latent_frames, given):
    """The reference: a mask per video frame (4*T' of them) viewed as [4, T']."""
    expected = torch.ones(4, latent_frames)
    for frame in given:
        expected[frame // latent_frames, frame % latent_frames] = 0
    return expected


@pytest.mark.parametrize("num_frames,latent_frames", [(12, 3), (16, 4), (88, 22)])
@pytest.mark.parametrize("has_last", [False, True])
def test_folded_mask_by_hand(num_frames, latent_frames, has_last):
    given = conditioning_indices(num_frames, has_last)
    assert given == ([0, num_frames - 1] if has_last else [0])
    mask = frame_mask(given, (latent_frames, 3, 5))
    assert mask.shape == (1, 4, latent_frames, 3, 5)
    # channel c, latent frame t is video frame c*T' + t
    expected = hand_mask(latent_frames, given)
    assert torch.equal(mask[0, :, :, 1, 2], expected)
    assert (mask == mask[..., :1, :1]).all()            # constant over the latent grid
    # first frame → channel 0, latent frame 0; last frame (4T'-1) → channel 3, last latent frame
    assert mask[0, 0, 0, 0, 0] == 0
    assert mask[0, 3, -1, 0, 0] == (0 if has_last else 1)
    assert int((mask[0, :, :, 0, 0] == 0).sum()) == len(given)


def test_folded_mask_for_a_length_one_more_than_a_multiple_of_four():
    """89 frames → T'=23: the mask covers the 92 decoded frames; the last given frame is 88,
    i.e. channel 88 // 23 = 3, latent frame 88 % 23 = 19; frames 89..91 are generated."""
    mask = frame_mask(conditioning_indices(89, True), (23, 2, 2))
    assert mask[0, 3, 19, 0, 0] == 0 and mask[0, 0, 0, 0, 0] == 0
    assert int((mask[0, :, :, 0, 0] == 0).sum()) == 2
    assert mask[0, 3, 20:, 0, 0].eq(1).all()


def test_reference_reshape_matches():
    """The original's exact ops on a tiny case: ones [B,1,T,H,W] → zeros at given frames →
    bilinear to latent size → view(B, 4, T', h, w)."""
    num_frames, latent_frames, h, w = 16, 4, 4, 6
    pixel_mask = torch.ones(1, 1, num_frames, 32, 48)
    pixel_mask[:, :, [0, -1]] = 0
    per_frame = F.interpolate(pixel_mask[0].movedim(1, 0), size=(h, w), mode="bilinear")   # [T, 1, h, w]
    reference = per_frame.movedim(0, 1)[None].view(1, 4, latent_frames, h, w)
    assert torch.equal(frame_mask([0, num_frames - 1], (latent_frames, h, w)), reference)
