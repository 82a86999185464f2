"""TI2V model inputs, checked against expectations worked out by hand from the original
pipeline's algorithm (centre crop → bilinear antialiased resize → 2x-1; per-frame mask viewed
as 4 channels x T' latent frames), the pad / stretch alternatives, the frame index rule, and the
continuation and clip-joining arithmetic."""
import pytest
import torch
import torch.nn.functional as F

from allegro.clips import join_clips
from allegro.ti2v import (center_crop_box, conditioning_indices, continuation_frames, fit_box, frame_mask,
                          parse_frame_indices, prepare_image, resolve_frame_indices)
from numerics import assert_measured


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
    """An RGBA image loses its alpha; a one-pixel image fills the frame with its colour, scaled to -1..1. Measured
    spread (default/avx2/avx512 × 1/2 threads): 0 in every setting (absolute); bound torch.allclose's default, rtol
    1e-5 + atol 1e-8."""
    rgba = torch.rand(20, 30, 4)
    assert torch.equal(prepare_image(rgba, 16, 16), prepare_image(rgba[..., :3], 16, 16))
    one = torch.tensor([[[1.0, 0.0, 0.5]]])
    out = prepare_image(one, 16, 32)
    expected = torch.tensor([1.0, -1.0, 0.0]).view(3, 1, 1).expand(3, 16, 32)
    assert out.shape == expected.shape
    assert_measured((out - expected).abs().max().item(), 1e-5, "abs")


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


@pytest.mark.parametrize("indices", [[0, -1], [0], [0, 9, 17, -1], [5, 2, 13], list(range(7)), [-3, 3]])
def test_reference_reshape_matches(indices):
    """The original's exact ops on a tiny case: ones [B,1,T,H,W] → zeros at the given frames (its
    conditional_images_indices, negative ones from the end) → bilinear to latent size → view(B, 4, T', h, w)."""
    num_frames, latent_frames, h, w = 24, 6, 4, 6
    pixel_mask = torch.ones(1, 1, num_frames, 32, 48)
    pixel_mask[:, :, indices] = 0
    per_frame = F.interpolate(pixel_mask[0].movedim(1, 0), size=(h, w), mode="bilinear")   # [T, 1, h, w]
    reference = per_frame.movedim(0, 1)[None].view(1, 4, latent_frames, h, w)
    assert torch.equal(frame_mask(resolve_frame_indices(indices, num_frames), (latent_frames, h, w)), reference)


def test_keyframe_mask_by_hand():
    """Frames 0, 9, 17 and -1 (= 23) of 24: T' = 6, frame f is channel f // 6, latent frame f % 6."""
    given = resolve_frame_indices([0, 9, 17, -1], 24)
    assert given == [0, 9, 17, 23]
    mask = frame_mask(given, (6, 2, 3))[0, :, :, 0, 0]
    expected = torch.ones(4, 6)
    for channel, latent_frame in ((0, 0), (1, 3), (2, 5), (3, 5)):
        expected[channel, latent_frame] = 0
    assert torch.equal(mask, expected)


# ---------------------------------------------------------------------------------------------
# Images of any aspect: crop (the reference), pad, stretch

@pytest.mark.parametrize("size,target,box", [
    # square into landscape: full height, 720 columns centred at (1280 - 720) // 2
    ((1000, 1000), (720, 1280), (0, 280, 720, 720)),
    # portrait 1280x720 (HxW): full height, round(720 * 720 / 1280) = 405 columns from (1280 - 405) // 2 = 437
    ((1280, 720), (720, 1280), (0, 437, 720, 405)),
    # wider than the target: full width, round(1280 * 100 / 400) = 320 rows from (720 - 320) // 2 = 200
    ((100, 400), (720, 1280), (200, 0, 320, 1280)),
    # same aspect: fills the target
    ((360, 640), (720, 1280), (0, 0, 720, 1280)),
    # one pixel into a landscape target: a 720x720 square in the middle
    ((1, 1), (720, 1280), (0, 280, 720, 720)),
])
def test_fit_box_by_hand(size, target, box):
    assert fit_box(*size, *target) == box


def test_pad_keeps_the_whole_image_on_black_bars():
    image = torch.rand(90, 60, 3)            # portrait image, landscape 32x48 target
    out = prepare_image(image, 32, 48, "pad")
    # by hand: full height 32, round(32 * 60 / 90) = 21 columns from (48 - 21) // 2 = 13
    inner = F.interpolate(image.movedim(-1, 0)[None], size=(32, 21), mode="bilinear", align_corners=True,
                          antialias=True)[0] * 2 - 1
    assert torch.equal(out[:, :, 13:34], inner)
    assert (out[:, :, :13] == -1).all() and (out[:, :, 34:] == -1).all()      # black in [-1, 1]


def test_stretch_resizes_the_whole_image_to_the_target():
    image = torch.rand(90, 60, 3)
    out = prepare_image(image, 32, 48, "stretch")
    expected = F.interpolate(image.movedim(-1, 0)[None], size=(32, 48), mode="bilinear", align_corners=True,
                             antialias=True)[0] * 2 - 1
    assert torch.equal(out, expected)
    assert not torch.equal(out, prepare_image(image, 32, 48, "crop"))


def test_the_three_modes_agree_when_the_aspect_already_matches_and_others_are_refused():
    image = torch.rand(64, 96, 3)
    crop = prepare_image(image, 32, 48)
    assert torch.equal(crop, prepare_image(image, 32, 48, "pad"))
    assert torch.equal(crop, prepare_image(image, 32, 48, "stretch"))
    with pytest.raises(ValueError, match="resize must be one of crop, pad, stretch"):
        prepare_image(image, 32, 48, "fill")


# ---------------------------------------------------------------------------------------------
# The frame index rule

@pytest.mark.parametrize("text,indices", [("0, 40, -1", [0, 40, -1]), ("0 40 -1", [0, 40, -1]), (" 7 ", [7]),
                                          ("3,-2;5", [3, -2, 5])])
def test_indices_parse(text, indices):
    assert parse_frame_indices(text) == indices


@pytest.mark.parametrize("text,message", [("", "No frame indices given"), (" , ", "No frame indices given"),
                                          ("0, a", "'a' in the frame indices is not a whole number"),
                                          ("1.5", "'1.5' in the frame indices is not a whole number")])
def test_bad_index_text_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_frame_indices(text)


def test_any_frame_may_be_given_once_negative_ones_from_the_end():
    assert resolve_frame_indices(list(range(24)), 24) == list(range(24))
    assert resolve_frame_indices([-1, -24, 5], 24) == [23, 0, 5]
    assert resolve_frame_indices([-1], 89) == [88]              # 4k + 1: the video's last frame, not the 92nd


@pytest.mark.parametrize("indices,message", [
    ([0, 24], r"Frame index 24 is outside the 24-frame video: use 0 to 23, or -24 to -1 counted from the end"),
    ([-25], r"Frame index -25 is outside the 24-frame video"),
    ([0, -24], r"Two images on frame 0 \(indices 0 and -24\)"),
    ([5, 3, 5], r"Two images on frame 5 \(index 5 twice\)"),
])
def test_out_of_range_and_repeated_indices_are_refused(indices, message):
    with pytest.raises(ValueError, match=message):
        resolve_frame_indices(indices, 24)


# ---------------------------------------------------------------------------------------------
# Continuing a clip and joining clips

def test_continuation_takes_the_last_frames_of_the_previous_clip_as_the_first_ones():
    previous = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 4, 4, 3)
    frames = continuation_frames(previous, 3, 24)
    assert sorted(frames) == [0, 1, 2]
    assert [frames[i][0, 0, 0].item() for i in range(3)] == [7.0, 8.0, 9.0]


@pytest.mark.parametrize("overlap,length,message", [
    (0, 24, "overlap_frames must be at least 1"),
    (11, 24, r"overlap_frames \(11\) is larger than the previous clip, which holds 10 frames: use at most 10"),
    (8, 8, r"overlap_frames \(8\) must be smaller than the new clip's length \(8\)"),
])
def test_continuation_refuses_an_overlap_that_does_not_fit(overlap, length, message):
    with pytest.raises(ValueError, match=message):
        continuation_frames(torch.zeros(10, 4, 4, 3), overlap, length)


def constant_frames(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 3, 3)


def test_join_blends_or_drops_the_overlap_by_hand():
    """Joining two clips blends the overlap with linear weights (or drops it) and keeps the other frames as they are.
    Measured spread (default/avx2/avx512 × 1/2 threads): 0 in every setting (absolute, the blend vs the weights by
    hand); bound atol 1e-6."""
    previous, following = constant_frames([0, 1, 2, 3, 4, 5]), constant_frames([10, 11, 12, 13, 14])
    blended = join_clips(previous, following, 2, "blend")[:, 0, 0, 0]
    # overlap frames: previous 4, 5 and next 10, 11 with next's weights 1/3, 2/3
    expected = [0, 1, 2, 3, 4 * 2 / 3 + 10 / 3, 5 / 3 + 11 * 2 / 3, 12, 13, 14]
    assert_measured((blended - torch.tensor(expected)).abs().max().item(), 1e-6, "abs")
    assert join_clips(previous, following, 2, "drop")[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 12, 13, 14]
    assert join_clips(previous, following, 0)[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14]


@pytest.mark.parametrize("following,overlap,message", [
    (torch.zeros(5, 2, 4, 3), 2, "The clips differ in size"),
    (torch.zeros(5, 2, 3, 3), 6, r"overlap_frames \(6\) must be from 0 to the shorter clip's length \(5 frames"),
])
def test_join_refuses_clips_that_do_not_fit(following, overlap, message):
    with pytest.raises(ValueError, match=message):
        join_clips(torch.zeros(6, 2, 3, 3), following, overlap)
