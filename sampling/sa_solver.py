"""SA-Solver (Xue et al. 2023): stochastic Adams predictor-corrector. Not implemented yet."""


def sa_solver(model, x, sigmas, ctx, **kw):
    raise NotImplementedError("sa_solver is not implemented yet")
