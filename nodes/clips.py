"""Joining video clips: a clip continued from another ('Allegro TI2V Continue Video') overlaps it by
`overlap_frames` frames; this node joins the two IMAGE batches, blending or dropping the overlap
(allegro.clips). Chain it to join more clips."""
from comfy_api.v0_0_2 import io

from ..allegro.clips import JOIN_MODES, join_clips
from ..adapters import checks


class AllegroJoinClips(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_JoinClips",
            display_name="Allegro Join Clips",
            category="Allegro/video",
            description="Joins two clips into one video, the second continuing the first: their overlap_frames "
                        "overlapping frames are cross-faded ('blend') or the second clip's copies dropped ('drop'). "
                        "previous + next - overlap_frames frames. Use the overlap_frames of 'Allegro TI2V Continue "
                        "Video'; 0 just appends.",
            inputs=[
                io.Image.Input("previous", tooltip="The earlier clip's frames (or the video joined so far)."),
                io.Image.Input("next", tooltip="The clip that continues it, of the same width and height."),
                io.Int.Input("overlap_frames", default=4, min=0, max=1024,
                             tooltip="Frames the clips share: the next clip's first overlap_frames frames re-make "
                                     "the previous clip's last ones. The same value as in 'Allegro TI2V Continue "
                                     "Video'."),
                io.Combo.Input("mode", options=list(JOIN_MODES), default="blend",
                               tooltip="blend: cross-fade the overlapping frames from the previous clip to the next "
                                       "(no visible jump). drop: keep the previous clip's frames exactly and drop the "
                                       "next clip's copies."),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="The joined video frames [frames, height, width, "
                                                                    "3]: previous + next - overlap_frames.")],
        )

    @classmethod
    def execute(cls, previous, next, overlap_frames, mode) -> io.NodeOutput:       # noqa: A002 (input name)
        node = "Allegro Join Clips"
        clips = [checks.image(node, name, clip, "video frames") for name, clip in (("previous", previous), ("next", next))]
        overlap_frames = checks.whole_number(node, "overlap_frames", overlap_frames, 0)
        return io.NodeOutput(join_clips(*clips, overlap_frames, mode))
