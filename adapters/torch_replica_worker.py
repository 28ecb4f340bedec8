"""The replica side of the PyTorch data-parallel backends: runs in each of the ReplicaGroup's processes.

`serve(rank, processes)` is the group's entry: it joins one gloo process group of `processes` ranks
(torch.distributed.init_process_group with MASTER_ADDR/MASTER_PORT from the environment the group sets),
creates the subgroups of ranks [0, W) for every world size W once (every rank calls new_group in the same
order, as torch.distributed requires), and returns the handler that answers one payload per step:

    payload = {"backend": "ddp" | "naive" | "sync", "world_size": W, "dtype": "float32" | "float64",
               "device": "cpu" | "cuda", "x": shard, "dy": shard or None, "eps", "momentum",
               "gamma", "beta", "running_mean", "running_var", "batches_seen"}

Ranks >= W receive None and idle (answer None). An answer holds this replica's y, dx, running statistics
(as the next step would see them) and its dgamma/dbeta (see each step for what they are). The steps:

  ddp    DistributedDataParallel around torch.nn.BatchNorm1d: per-replica statistics; gradients averaged
         over the group by DDP's reducer; buffers broadcast from rank 0 at the start of the next forward.
  naive  the all-reduce "naive SyncBN" pattern of detection codebases (detectron2 NaiveSyncBatchNorm,
         stats_mode="N"), reimplemented here (see `naive_sync_batch_norm`).
  sync   torch.nn.SyncBatchNorm on a CUDA device, in its own process group (gloo with CUDA tensors).

A test-only fault switch: with BNCONF_TEST_FAULTS=1 in the environment, a payload's "fault" entry
{"rank": k, "kind": "hang" | "die"} makes rank k sleep before its first collective (its peers then wait
inside one) or kill itself mid-step. Without the variable the entry is ignored.
"""

import os
import signal
import time
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# gloo's own deadline stays well beyond the parent's per-call deadline: a hang ends as the parent's ReplicaTimeout
GLOO_TIMEOUT = timedelta(seconds=600)


def serve(rank: int, processes: int):
    """Join the process group, build the subgroups, and return the step handler."""
    torch.set_num_threads(1)  # W processes share the machine's cores
    dist.init_process_group("gloo", rank=rank, world_size=processes, timeout=GLOO_TIMEOUT)
    groups = {w: dist.new_group(list(range(w)), timeout=GLOO_TIMEOUT) for w in range(1, processes + 1)}
    faults = os.environ.get("BNCONF_TEST_FAULTS") == "1"
    steps = {"ddp": ddp_step, "naive": naive_step, "sync": sync_step}

    def handle(payload):
        if payload is None:
            return None
        if faults and payload.get("fault"):
            _fault(payload["fault"], rank)
        return steps[payload["backend"]](payload, groups[payload["world_size"]])

    return handle


def _fault(fault: dict, rank: int) -> None:
    if fault["rank"] != rank:
        return
    if fault["kind"] == "hang":
        time.sleep(3600)  # the peers block in the step's first collective meanwhile
    elif fault["kind"] == "die":
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- tensors in and out


def _tensor(a, dtype, device, grad: bool = False):
    t = torch.tensor(np.asarray(a, dtype=np.float64), device=device).to(dtype)
    return t.requires_grad_(grad)


def _numpy(t):
    return None if t is None else t.detach().to(torch.float64).cpu().numpy()


def _module(cls, p: dict, channels: int, **kwargs):
    """A batch-norm module of `cls` holding the payload's parameters and running statistics."""
    dtype, device = DTYPES[p["dtype"]], p["device"]
    m = cls(channels, eps=p["eps"], momentum=p["momentum"], affine=p["gamma"] is not None,
            track_running_stats=p["running_mean"] is not None, device=device, dtype=dtype, **kwargs)
    with torch.no_grad():
        if p["gamma"] is not None:
            m.weight.copy_(_tensor(p["gamma"], dtype, device))
            m.bias.copy_(_tensor(p["beta"], dtype, device))
        if p["running_mean"] is not None:
            m.running_mean.copy_(_tensor(p["running_mean"], dtype, device))
            m.running_var.copy_(_tensor(p["running_var"], dtype, device))
            m.num_batches_tracked.fill_(p["batches_seen"])
    return m


def _grad(t):
    """t's gradient; zeros where autograd left none (SyncBatchNorm's backward returns None for an empty
    shard's input and parameters, torch/nn/modules/_functions.py, "Leave grad_input, grad_weight and
    grad_bias as None, which will be interpreted by the autograd engine as Tensors full of zeros")."""
    return _numpy(torch.zeros_like(t) if t.grad is None else t.grad)


def _answer(y, x, running, weight=None, bias=None, backward=False) -> dict:
    rm, rv = running
    return {"y": _numpy(y), "dx": _grad(x) if backward else None,
            "running_mean": _numpy(rm), "running_var": _numpy(rv),
            "dgamma": _grad(weight) if backward and weight is not None else None,
            "dbeta": _grad(bias) if backward and bias is not None else None}


# ---------------------------------------------------------------- DDP(BatchNorm1d)


def ddp_step(p: dict, group) -> dict:
    """One training step of DistributedDataParallel(torch.nn.BatchNorm1d) on this replica's shard.

    A fresh module and DDP wrapper per step (DDP's constructor broadcasts rank 0's parameters and buffers,
    all equal here). The forward normalizes with this shard's statistics and updates this replica's
    running statistics; y.backward(dy) (loss = sum(y * dy)) gives dx locally, and DDP's reducer all-reduces
    the parameter gradients as the *average* over the group: each replica's gradient is multiplied by
    1/W before the sum (torch/csrc/distributed/c10d/reducer.cpp, Reducer::mark_variable_ready_dense,
    `grad * (1/div_factor_)` when no comm hook is registered), so weight.grad = sum_r fl(g_r / W). The
    answer's dgamma/dbeta are that average; the parent multiplies by W.

    Running statistics as the next step sees them: DDP broadcasts buffers from rank 0 at the start of a
    forward (torch/nn/parallel/distributed.py: DistributedDataParallel._pre_forward, lines 1779-1782,
    `if self._check_sync_bufs_pre_fwd(): self._sync_buffers()`; _sync_buffers, lines 2405-2425, the
    authoritative rank 0), when the previous forward ran with gradients enabled (will_sync_module_buffers,
    line 2382: require_forward_param_sync, set by _post_forward, line 1829). So a further forward in eval
    mode under no_grad (which changes no statistic) performs exactly that broadcast, and the buffers are
    read after it.
    """
    from torch.nn.parallel import DistributedDataParallel

    dtype, backward = DTYPES[p["dtype"]], p["dy"] is not None
    x = _tensor(p["x"], dtype, "cpu", grad=backward)
    bn = _module(torch.nn.BatchNorm1d, p, x.shape[1])
    ddp = DistributedDataParallel(bn, process_group=group)
    ddp.train()
    y = ddp(x)
    if backward:
        y.backward(_tensor(p["dy"], dtype, "cpu"))
    ddp.eval()
    with torch.no_grad():
        ddp(x.detach()[:0])  # the next forward: rank 0's buffers broadcast to every replica
    return _answer(y, x, (bn.running_mean, bn.running_var), bn.weight, bn.bias, backward)


# ---------------------------------------------------------------- naive SyncBN (detectron2 pattern)


class _AllReduceSum(torch.autograd.Function):
    """A differentiable all-reduce (sum) as fvcore.nn.distributed._AllReduce computes it: the forward
    all-gathers every replica's tensor and sums the stacked copies (the same order on every rank); the
    backward all-reduces the incoming gradient (d(sum_r v_r)/d v_k = 1, so every replica's gradient is
    the sum of all replicas' gradients of the result)."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        parts = [torch.zeros_like(t) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, t, group=group)
        return torch.stack(parts, dim=0).sum(dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def naive_sync_batch_norm(x, weight, bias, running_mean, running_var, momentum: float, eps: float, group):
    """The naive SyncBN forward in training, after detectron2's NaiveSyncBatchNorm.forward with
    stats_mode="N" (facebookresearch/detectron2, detectron2/layers/batch_norm.py; its all-reduce is
    fvcore.nn.distributed.differentiable_all_reduce). Reimplemented, not copied:

      with one replica, the plain module's forward (detectron2 checks comm.get_world_size() == 1 and calls
          BatchNorm2d.forward: torch's own batch norm, Bessel-corrected running variance);
      otherwise, per replica with B rows: mean_r = mean(x), sq_r = mean(x*x) over every axis but 1;
          v = all-reduce-sum(B * [mean_r, sq_r, 1]) (an empty replica sends zeros plus sum(x) so that its
          input keeps a gradient path); N = v[-1]; momentum' = min(N, 1) * momentum (no update when N = 0);
          mean, E[x^2] = v[:2C] / max(N, 1); var = E[x^2] - mean^2 (biased, one pass);
          scale = gamma / sqrt(var + eps), shift = beta - mean * scale, y = x * scale + shift;
          running_mean += momentum' (mean - running_mean); running_var += momentum' (var - running_var)
          (the biased variance, unlike torch.nn.SyncBatchNorm's Bessel-corrected one).
    No affine parameters: scale = invstd and shift = -mean * scale (gamma 1 and beta 0 round nothing)."""
    if dist.get_world_size(group) == 1:
        return F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)
    b, c = x.shape[0], x.shape[1]
    dims = [0, *range(2, x.dim())]
    mean, meansqr = x.mean(dim=dims), (x * x).mean(dim=dims)
    if b == 0:
        vec = torch.zeros(2 * c + 1, dtype=x.dtype, device=x.device) + x.sum()
    else:
        vec = torch.cat([mean, meansqr, torch.ones(1, dtype=x.dtype, device=x.device)])
    vec = _AllReduceSum.apply(vec * b, group)
    total = vec[-1].detach()
    update = total.clamp(max=1) * momentum
    mean, meansqr, _ = torch.split(vec / total.clamp(min=1), c)
    var = meansqr - mean * mean
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else weight * invstd
    shift = -(mean * scale) if bias is None else bias - mean * scale
    if running_mean is not None:
        with torch.no_grad():
            running_mean += update * (mean.detach() - running_mean)
            running_var += update * (var.detach() - running_var)
    view = (1, c) + (1,) * (x.dim() - 2)
    return x * scale.reshape(view) + shift.reshape(view)


def naive_step(p: dict, group) -> dict:
    """One training step of the naive SyncBN pattern; dgamma/dbeta are this replica's local gradients
    (no DDP around it: the parent sums them)."""
    dtype, backward = DTYPES[p["dtype"]], p["dy"] is not None
    x = _tensor(p["x"], dtype, "cpu", grad=backward)
    weight = None if p["gamma"] is None else _tensor(p["gamma"], dtype, "cpu", grad=backward)
    bias = None if p["beta"] is None else _tensor(p["beta"], dtype, "cpu", grad=backward)
    rm = None if p["running_mean"] is None else _tensor(p["running_mean"], dtype, "cpu")
    rv = None if p["running_var"] is None else _tensor(p["running_var"], dtype, "cpu")
    y = naive_sync_batch_norm(x, weight, bias, rm, rv, p["momentum"], p["eps"], group)
    if backward:
        y.backward(_tensor(p["dy"], dtype, "cpu"))
    return _answer(y, x, (rm, rv), weight, bias, backward)


# ---------------------------------------------------------------- torch.nn.SyncBatchNorm (CUDA)


def sync_step(p: dict, group) -> dict:
    """One training step of torch.nn.SyncBatchNorm(process_group=group) on cuda:0 (every rank shares the
    one GPU: NCCL refuses two ranks on one device, gloo takes CUDA tensors and SyncBatchNorm has a gloo
    path, torch/nn/modules/_functions.py SyncBatchNorm.forward, `dist.all_gather(combined_list, ...)`).
    Not wrapped in DDP: dgamma/dbeta are this replica's local gradients, summed by the parent. With one
    replica SyncBatchNorm falls back to F.batch_norm (torch/nn/modules/batchnorm.py, lines 859-873)."""
    dtype, backward, device = DTYPES[p["dtype"]], p["dy"] is not None, p["device"]
    x = _tensor(p["x"], dtype, device, grad=backward)
    bn = _module(torch.nn.SyncBatchNorm, p, x.shape[1], process_group=group)
    bn.train()
    y = bn(x)
    if backward:
        y.backward(_tensor(p["dy"], dtype, device))
    torch.cuda.synchronize()
    return _answer(y, x, (bn.running_mean, bn.running_var), bn.weight, bn.bias, backward)
