"""Latent previews follow a preview setting made at run time, on every ComfyUI.

A preview method can be set three ways: at launch (--preview-method), at run time by writing
comfy.cli_args.args.preview_method (ComfyUI-Manager's preview setting and API clients do; on 0.3.75 it is
the only way after launch), and, since ComfyUI 0.8, per prompt: the front-end sends its "Preview method"
setting in the prompt's extra_data when it is not "default". For the last, execution.py calls
latent_preview.set_preview_method(extra_data.get("preview_method")) before any node runs: it applies the
prompt's choice, or else restores latent_preview.default_preview_method, the launch value captured at
import. So a run-time setting is dropped at the next prompt, for every sampler (core KSampler as much as
Allegro's: both choose their previewer through latent_preview).

A node cannot recover it (the reset runs before any node), and the package cannot keep it for its own
sampler alone: once the reset has written the launch value back, a later run-time setting of that same
value (turning previews off again) leaves no trace to see. So the package keeps the setting where core
looks for it: just before each per-prompt reset, an args.preview_method that differs from what the
previous reset left there was set at run time, and becomes the standing default the reset restores. The
prompt's own choice still applies to its prompt, as before. Where ComfyUI has no per-prompt reset (0.3.75)
nothing is changed. Unseen: a run-time setting equal to what the previous prompt chose for itself (the value
did not change); the next setting after it is seen."""
import logging
import sys

MARK = "allegro_keeps_runtime_preview_setting"


def keep_runtime_preview_setting() -> bool:
    """Wrap ComfyUI's per-prompt preview reset (where it has one) as described above; True if wrapped."""
    execution = sys.modules.get("execution")        # ComfyUI imports its executor before loading custom nodes
    reset = getattr(execution, "set_preview_method", None)
    if reset is None or getattr(reset, MARK, False):
        return False
    import latent_preview
    from comfy.cli_args import args
    left = {"method": latent_preview.default_preview_method}      # what args held after the last reset

    def set_preview_method(override=None):
        if args.preview_method != left["method"]:
            logging.info("Preview method %s was set at run time: it stays the default for prompts that do not "
                         "choose their own.", args.preview_method.value)
            latent_preview.default_preview_method = args.preview_method
        reset(override)
        left["method"] = args.preview_method

    setattr(set_preview_method, MARK, True)
    set_preview_method.__wrapped__ = reset
    execution.set_preview_method = set_preview_method
    return True
