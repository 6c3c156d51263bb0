"""torch.hub entry points: a trained mvcoding encoder, offline from a local checkout.

    encoder = torch.hub.load("/path/to/mvcoding", "cmc_encoder", source="local",
                             checkpoint="runs/x/checkpoints/last.pt", view="rgb")

`checkpoint` is a training checkpoint (or run directory) or an export of `mvcoding export` (FILE beside
FILE.json); the encoder comes back in eval mode, mapping the view's normalised input to (B, feat_dim).
"""

dependencies = ["torch", "torchvision"]


def cmc_encoder(checkpoint: str, view: str = "rgb", **kw):
    """The `view` encoder of `checkpoint` (mvcoding.load_encoder); kw: device=... to move it there."""
    from mvcoding.export import load_encoder

    return load_encoder(checkpoint, view, **kw)
