"""Video-size rules: the reference frame-count rule, and errors that name the allowed values."""
import pytest

from allegro.geometry import check_video_size, decoded_frames, latent_frames


@pytest.mark.parametrize("frames,expected", [(88, 22), (40, 10), (89, 23), (1, 1), (4, 1), (5, 2), (90, 23)])
def test_latent_frames_follow_the_reference_rule(frames, expected):
    # diffusers AllegroPipeline.prepare_latents: ceil(n/4) for even n, ceil((n-1)/4)+1 for odd n
    import math
    reference = math.ceil(frames / 4) if frames % 2 == 0 else math.ceil((frames - 1) / 4) + 1
    assert latent_frames(frames) == reference == expected


def test_one_frame_rule_round_trips():
    """Every length fits in the frames its latent decodes to, with less than one latent frame to spare
    (the reference crops the decoded video back to n; encoding pads n up the same way)."""
    for frames in range(1, 200):
        assert frames <= decoded_frames(latent_frames(frames)) < frames + 4
    assert latent_frames(decoded_frames(22)) == 22


def test_reference_sizes_are_accepted():
    size = check_video_size(1280, 720, 88)
    assert size.latent_shape == (22, 90, 160)
    assert size.tokens == 79200            # "79.2K tokens at full size"
    assert check_video_size(640, 368, 40).latent_shape == (10, 46, 80)
    assert check_video_size(832, 480, 89).latent_shape == (23, 60, 104)


@pytest.mark.parametrize("width,height,frames,message", [
    (1280, 360, 88, "height must be a multiple of 16.*got 360, use 352 or 368"),
    (1000, 720, 88, "width must be a multiple of 16.*use 992 or 1008"),
    (8, 720, 88, "width must be at least 16"),
    (1280, 0, 88, "height must be at least 16"),
    (1280, 720, 0, "length must be at least 1"),
    (1280, 720, -4, "length must be at least 1"),
    (1280, 720, 90, "length must be a multiple of 4 or one more.*got 90, use 88, 89 or 92"),
    (1280, 720, 87, "got 87, use 84, 85 or 88"),
])
def test_bad_sizes_name_the_allowed_values(width, height, frames, message):
    with pytest.raises(ValueError, match=message):
        check_video_size(width, height, frames)
