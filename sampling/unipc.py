"""UniPC (Zhao et al. 2023). Not implemented yet."""


def uni_pc(model, x, sigmas, ctx, variant="bh1"):
    raise NotImplementedError("uni_pc is not implemented yet")
