"""Fixtures: PyTorch (float64 on CPU) as the oracle for batch norm.

Each case is an .npz with float32 inputs (what the GPU gets) and float64 expected
values computed by torch from those same float32 values:
  x, dy, gamma, beta            inputs (logical N,C,... order; 'layout' says how the
                                project must receive them)
  steps                         number of training forward steps (each on x_k)
  x_k (k=0..steps-1)            the batches, y_k expected outputs (float64 results rounded to float32)
  mean_k, invstd_k              saved batch stats of step k
  running_mean_k, running_var_k running stats after step k
  y_eval                        eval-mode output on x_0 after all steps
  dx, dgamma, dbeta             backward of the last step for dy
Usage: python3 scripts/make_fixtures.py tests/fixtures
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

SEED = 7031
torch.manual_seed(SEED)
rng = np.random.default_rng(SEED)

PUBLIC_CASES = [
    ("public_nchw", (3, 4, 5, 6), "channels_first", 0.1, 1e-5, True, 2, 0.0, 1.0),
    ("public_nhwc", (3, 4, 5, 6), "channels_last", 0.1, 1e-5, True, 2, 0.0, 1.0),
    ("public_nc", (9, 7), "channels_first", 0.1, 1e-5, True, 1, 0.0, 1.0),
    ("public_cumulative", (4, 3, 3, 3), "channels_first", None, 1e-5, True, 3, 0.0, 1.0),
    ("public_no_affine", (4, 3, 3, 3), "channels_first", 0.1, 1e-5, False, 1, 0.0, 1.0),
    ("public_eps_momentum", (2, 5, 7), "channels_first", 0.25, 1e-3, True, 2, 0.0, 1.0),
    ("public_offset", (6, 2, 8, 8), "channels_first", 0.1, 1e-5, True, 1, 1e4, 1.0),
]

# Added 2026-11-29 (after the cases above, so their random draws are unchanged): ranks and layouts
# the first set lacks, momentum 0 and 1, track_running_stats off, and an empty batch.
# Every case here also has the inference-mode backward (dx_eval, dgamma_eval, dbeta_eval: the
# backward of y_eval for dy, the statistics being constants).
MORE_CASES = [
    # name, shape, layout, momentum, eps, affine, steps, offset, scale, track_running_stats
    ("public_ncdhw", (2, 3, 3, 4, 5), "channels_first", 0.1, 1e-5, True, 2, 0.0, 1.0, True),
    ("public_ndhwc", (2, 3, 3, 4, 5), "channels_last", 0.1, 1e-5, True, 2, 0.0, 1.0, True),
    ("public_nlc", (4, 6, 9), "channels_last", 0.1, 1e-5, True, 2, 0.0, 1.0, True),
    ("public_momentum_0", (3, 4, 5), "channels_first", 0.0, 1e-5, True, 2, 0.0, 1.0, True),
    ("public_momentum_1", (3, 4, 5), "channels_first", 1.0, 1e-5, True, 2, 0.0, 1.0, True),
    ("public_untracked", (4, 3, 3, 3), "channels_first", 0.1, 1e-5, True, 2, 0.0, 1.0, False),
]


def run_case(out, name, shape, layout, momentum, eps, affine, steps, offset, scale, track=True, eval_backward=False):
    c = shape[1]
    xs = [(rng.standard_normal(shape) * scale + offset).astype(np.float32) for _ in range(steps)]
    if name in ("public_nchw",):
        xs[0][:, 0] = 5.0  # a constant channel: its output must equal beta
    gamma = (rng.random(c) + 0.5).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    rm = torch.zeros(c, dtype=torch.float64) if track else None
    rv = torch.ones(c, dtype=torch.float64) if track else None
    w = torch.tensor(gamma, dtype=torch.float64) if affine else None
    b = torch.tensor(beta, dtype=torch.float64) if affine else None
    rec = dict(gamma=gamma, beta=beta, dy=dy)
    red = [0] + list(range(2, len(shape)))
    for k, x in enumerate(xs):
        # momentum=None: torch's module passes 1/num_batches_tracked as momentum
        mom = (1.0 / (k + 1)) if momentum is None else momentum
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        y = F.batch_norm(xt, rm, rv, w, b, training=True, momentum=mom, eps=eps)
        mean = xt.detach().mean(dim=red)
        var = xt.detach().var(dim=red, unbiased=False)
        rec[f"x_{k}"] = x
        rec[f"y_{k}"] = y.detach().numpy().astype(np.float32)
        rec[f"mean_{k}"] = mean.numpy()
        rec[f"invstd_{k}"] = (1.0 / torch.sqrt(var + eps)).numpy()
        if track:
            rec[f"running_mean_{k}"] = rm.clone().numpy()
            rec[f"running_var_{k}"] = rv.clone().numpy()
        if k == steps - 1:
            if affine:
                wg = w.clone().requires_grad_(True)
                bg = b.clone().requires_grad_(True)
                xt2 = torch.tensor(x, dtype=torch.float64, requires_grad=True)
                y2 = F.batch_norm(xt2, None, None, wg, bg, training=True, eps=eps)
                dx, dg, db = torch.autograd.grad(y2, (xt2, wg, bg), torch.tensor(dy, dtype=torch.float64))
                rec["dgamma"] = dg.numpy()
                rec["dbeta"] = db.numpy()
            else:
                xt2 = torch.tensor(x, dtype=torch.float64, requires_grad=True)
                y2 = F.batch_norm(xt2, None, None, None, None, training=True, eps=eps)
                (dx,) = torch.autograd.grad(y2, (xt2,), torch.tensor(dy, dtype=torch.float64))
            rec["dx"] = dx.numpy().astype(np.float32)
    # Inference: with running stats tracked, they are used; without, PyTorch uses batch statistics.
    rec["y_eval"] = F.batch_norm(torch.tensor(xs[0], dtype=torch.float64), rm, rv, w, b, training=not track, eps=eps).numpy().astype(np.float32)
    if eval_backward and track:
        xe = torch.tensor(xs[0], dtype=torch.float64, requires_grad=True)
        params = [xe]
        if affine:
            we, be = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
            params += [we, be]
        else:
            we = be = None
        ye = F.batch_norm(xe, rm, rv, we, be, training=False, eps=eps)
        grads = torch.autograd.grad(ye, params, torch.tensor(dy, dtype=torch.float64))
        rec["dx_eval"] = grads[0].numpy().astype(np.float32)
        if affine:
            rec["dgamma_eval"], rec["dbeta_eval"] = grads[1].numpy(), grads[2].numpy()
    np.savez_compressed(os.path.join(out, name + ".npz"), **rec)
    entry = dict(case=name, shape=list(shape), layout=layout, momentum=momentum, eps=eps, affine=affine,
                 steps=steps, offset=offset, scale=scale)
    if not track:
        entry["track_running_stats"] = False
    return entry


def empty_batch_case(out):
    """Module semantics: an empty training batch counts in num_batches_tracked (momentum None)."""
    m = torch.nn.BatchNorm1d(1, momentum=None, affine=False).double()
    m.train()
    batches = [np.array([[1.0], [3.0]], np.float32), np.zeros((0, 1), np.float32), np.array([[5.0], [7.0]], np.float32)]
    rec = {}
    for k, x in enumerate(batches):
        m(torch.tensor(x, dtype=torch.float64))
        rec[f"x_{k}"] = x
        rec[f"running_mean_{k}"] = m.running_mean.detach().numpy().copy()
        rec[f"running_var_{k}"] = m.running_var.detach().numpy().copy()
        rec[f"num_batches_tracked_{k}"] = np.array(int(m.num_batches_tracked))
    np.savez_compressed(os.path.join(out, "public_empty_batch.npz"), **rec)
    return dict(case="public_empty_batch", shape=[2, 1], layout="channels_first", momentum=None, eps=1e-5,
                affine=False, steps=3, module=True,
                note="batch 1 is empty ([0, 1]); num_batches_tracked_k is PyTorch's module counter after step k")


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    manifest = [run_case(out, *c) for c in PUBLIC_CASES]
    manifest += [run_case(out, *c[:9], track=c[9], eval_backward=True) for c in MORE_CASES]
    manifest.append(empty_batch_case(out))
    # training with one value per channel must be refused
    try:
        F.batch_norm(torch.zeros(1, 4, 1, 1), torch.zeros(4), torch.ones(4), training=True)
        refuse = "accepted"
    except ValueError as e:
        refuse = str(e)
    manifest.append(dict(case="one_value_per_channel", shape=[1, 4, 1, 1], expect_error=refuse))
    # eps: PyTorch (2.15) refuses eps <= 0 in training and eps < 0 in inference; eps = 0 in
    # inference is allowed.
    for training, eps in [(True, 0.0), (True, -1e-5), (False, -1e-5)]:
        try:
            F.batch_norm(torch.ones(2, 3), torch.zeros(3), torch.ones(3), training=training, eps=eps)
            msg = "accepted"
        except ValueError as e:
            msg = str(e)
        manifest.append(dict(case=f"eps_{eps}_{'training' if training else 'inference'}", shape=[2, 3],
                             training=training, eps=eps, expect_error=msg))
    json.dump(dict(torch=torch.__version__, cases=manifest), open(os.path.join(out, "manifest.json"), "w"), indent=1)
    print("wrote", len(manifest), "cases to", out)


if __name__ == "__main__":
    main()
