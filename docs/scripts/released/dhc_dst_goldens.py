"""Golden outputs of DHC's released DST (xmed-lab/DHC ``code/train_dst.py``, ``code/models/vnet_dst.py``),
for ``tests/test_released_dst.py`` (issue #32).

    python docs/scripts/released/dhc_dst_goldens.py --repo /path/to/DHC [--write]

Loads the release as ``dhc_goldens.py`` does (its ``setup`` / ``import_script``; numpy's removed
``np.float``, which ``WarmStartGradientReverseLayer.forward`` calls, is put back as ``float``),
runs on CPU in fp32 with the inputs of ``tests/released_inputs_dhc.py`` and writes
``tests/golden/released/dhc_dst.json``. Nothing of the release is copied into the suite.

Covered:
* ``grl``: the warm-start coefficient of ``WarmStartGradientReverseLayer`` (alpha 1, lo 0, hi 0.1,
  max_iters 500, as ``Decoder`` builds it) at several iteration counts.
* ``losses``: ``WorstCaseEstimationLoss`` and ``Onehot_WeightedCrossEntropyLoss`` with a mask
  (train_dst.py's ``cps_loss_func``): values and gradient checksums.
* ``init``: ``kaiming_normal_init_weight`` / ``xavier_normal_init_weight`` of train_dst.py applied to
  a ``VNet_Decoupled``: statistics per decoder (main, pseudo, worst) and layer type.
* ``forward``: the three heads of a ``VNet_Decoupled`` with weights set by name (train, eval).
* ``step``: one step of train_dst.py's loop body (lines 225-262) in fp32 with the released objects
  (``make_model_all``, ``make_loss_function``, ``Onehot_WeightedCrossEntropyLoss``,
  ``WorstCaseEstimationLoss``, both ``model.step()``), the GRL at iteration ``GRL_ITER`` so the
  reversed gradient reaches the encoder: loss terms, mask shares, gradients of every parameter
  (pseudo decoders: none), the networks after the SGD step.
* ``optimizer``: ``make_model_all()``'s SGD settings and ``base_lr`` / ``cps_w`` defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dhc_goldens as dg
import numpy as np
import torch
from _golden_io import ROOT, golden_path, provenance, repo_commit, write_golden

from tests import released_inputs_dhc as ri

GOLDEN = golden_path("dhc_dst")
GRL_ITERS = (0, 1, 100, 250, 500, 1000, 5000)
GRL_ITER = 300  # the iteration of the step golden (coefficient ~0.029)
#: the pseudo heads' 1x1x1 output convs are scaled so some voxels pass the 0.95 confidence mask
PSEUDO_HEAD_SCALE = 8.0

_DECODERS = {"decoder.": "", "decoder_pseudo.": "pseudo.", "decoder_worst.": "worst."}


def suite_name(name: str) -> str:
    """The suite's ``DecoupledVNet`` key of a released ``VNet_Decoupled`` key."""
    for rel, suite in _DECODERS.items():
        if name.startswith(rel):
            rest = name[len(rel):]
            if rest.startswith("head."):
                return suite + "out_conv." + rest[len("head."):]
            return suite + ri.suite_name(rest)
    return ri.suite_name(name)


def fill(net: torch.nn.Module, seed: int) -> None:
    sd = net.state_dict()
    net.load_state_dict({k: ri.tensor_for(suite_name(k), v, seed) for k, v in sd.items()})
    with torch.no_grad():
        net.decoder_pseudo.head.weight.mul_(PSEUDO_HEAD_SCALE)


def step_argv() -> list[str]:
    return ["--base_lr", str(ri.LR), "-w", str(ri.CPS_W), "-ep", "10", "-r", "-cr", "0"]


def golden_grl(vnet_dst) -> dict:
    layer = vnet_dst.Decoder(n_classes=2, n_filters=2, normalization="batchnorm", worst_case=True).grl_layer
    out = {}
    for it in GRL_ITERS:
        layer.iter_num = it
        x = torch.ones(3, requires_grad=True)
        layer(x).sum().backward()
        out[str(it)] = -float(x.grad[0])  # the gradient is -coeff
    return out


def golden_losses(mod) -> dict:
    inp = ri.loss_inputs()
    n = ri.N_L
    mask = (torch.softmax(inp["out_B"], 1).max(1).values > 0.2).float()
    out = {"mask_share": float(mask.mean())}

    def run(name, fn, *tensors):
        ts = [t.clone().requires_grad_(True) for t in tensors]
        v = fn(*ts)
        v.backward()
        out[name] = {"value": float(v.detach()), "grads": [None if t.grad is None else ri.checksum(t.grad) for t in ts]}

    wc = mod.WorstCaseEstimationLoss()
    run("worst_case", lambda a, b: wc(a[:n], b[:n], a[n:], b[n:]), inp["out_A"], inp["out_B"])
    ce = mod.Onehot_WeightedCrossEntropyLoss()
    run("masked_ce", lambda a: ce(a, inp["out_B"].argmax(1), mask), inp["out_A"])
    return out


def golden_init(mod, vnet_dst) -> dict:
    stats = {}
    for kind in ("kaiming", "xavier"):
        torch.manual_seed(0)
        net = vnet_dst.VNet_Decoupled(n_channels=1, n_classes=ri.NUM_CLASSES, n_filters=ri.INIT_WIDTH, normalization="batchnorm", has_dropout=True)
        getattr(mod, f"{kind}_normal_init_weight")(net)
        stats[kind] = {d: ri.layer_type_stats(getattr(net, d)) for d in ("decoder", "decoder_pseudo", "decoder_worst")}
    return stats


def golden_forward(vnet_dst) -> dict:
    x = torch.cat([ri.step_batch(0)["image_l"], ri.step_batch(0)["image_u"]])
    out = {}
    for mode in ("train", "eval"):
        net = vnet_dst.VNet_Decoupled(n_channels=1, n_classes=ri.NUM_CLASSES, n_filters=ri.WIDTH, normalization="batchnorm", has_dropout=False)
        fill(net, seed=1)
        net.train(mode == "train")
        with torch.no_grad():
            y = net(x)
        heads = y if mode == "train" else (y,)
        out[mode] = [ri.checksum(h) for h in heads]
    return out


def golden_step(mod) -> dict:
    """train_dst.py:225-262 (the ``with autocast()`` body, in fp32)."""
    mod.config.n_filters = ri.WIDTH
    A, opt_A = mod.make_model_all()
    B, opt_B = mod.make_model_all()
    A, B = mod.kaiming_normal_init_weight(A), mod.xavier_normal_init_weight(B)  # train_dst.py:212-213 (then overwritten)
    fill(A, 11)
    fill(B, 12)
    for net in (A, B):
        for d in (net.decoder, net.decoder_pseudo, net.decoder_worst):
            d.grl_layer.iter_num = GRL_ITER
    loss_func = mod.make_loss_function(mod.args.sup_loss)
    cps_loss_func = mod.Onehot_WeightedCrossEntropyLoss()
    worst = mod.WorstCaseEstimationLoss()
    cps_w = mod.get_current_consistency_weight(0)
    b = ri.step_batch(0)
    opt_A.zero_grad()
    opt_B.zero_grad()
    image_l, label_l, image_u = b["image_l"], b["label_l"].unsqueeze(1), b["image_u"]
    image = torch.cat([image_l, image_u], dim=0)
    tmp_bs = image.shape[0] // 2
    torch.manual_seed(100)
    output_A, output_A_pseudo, output_A_worst = A(image)
    output_B, output_B_pseudo, output_B_worst = B(image)
    output_A_l, output_A_u = output_A[:tmp_bs], output_A[tmp_bs:]
    output_B_l, output_B_u = output_B[:tmp_bs], output_B[tmp_bs:]
    loss_sup = loss_func(output_A_l, label_l) + loss_func(output_B_l, label_l)
    confidence_A, target_A = torch.nn.functional.softmax(output_A_pseudo, dim=1).max(dim=1)
    confidence_B, target_B = torch.nn.functional.softmax(output_B_pseudo, dim=1).max(dim=1)
    mask_A, mask_B = (confidence_A > 0.95).float(), (confidence_B > 0.95).float()
    loss_cps = cps_loss_func(output_A, target_B, mask_B) + cps_loss_func(output_B, target_A, mask_A)
    loss_worst = worst(output_A_l, output_A_worst[:tmp_bs], output_A_u, output_A_worst[tmp_bs:]) + \
        worst(output_B_l, output_B_worst[:tmp_bs], output_B_u, output_B_worst[tmp_bs:])
    loss = loss_sup + cps_w * (loss_cps + loss_worst)
    loss.backward()
    rec = {"cps_w": cps_w, "loss": float(loss.detach()), "sup": float(loss_sup.detach()), "cps": float(loss_cps.detach()),
           "worst": float(loss_worst.detach()),
           "mask_share": [float(mask_A.mean()), float(mask_B.mean())], "grads": {}}
    for name, net in (("A", A), ("B", B)):
        for d, key in (("decoder_pseudo", "pseudo"), ("decoder_worst", "worst")):
            rec["grads"][f"{name}.{key}_has_grad"] = any(p.grad is not None for p in getattr(net, d).parameters())
        rec["grads"][name] = ri.grads_checksum([(n, p) for n, p in net.named_parameters() if not n.startswith("decoder_pseudo.")], suite_name)
        rec["grads"][f"{name}.encoder"] = ri.grads_checksum([(n, p) for n, p in net.named_parameters() if n.startswith("block_") and "_up" not in n], suite_name)
    opt_A.step()
    opt_B.step()
    A.step()
    B.step()
    rec["A"], rec["B"] = ri.state_checksum(A, suite_name), ri.state_checksum(B, suite_name)
    rec["grl_after"] = A.decoder_worst.grl_layer.iter_num
    return rec


def golden_optimizer(mod) -> dict:
    mod.config.n_filters = 2
    _, opt = mod.make_model_all()
    return {**{k: opt.defaults[k] for k in ("momentum", "weight_decay", "nesterov", "dampening")},
            "base_lr_default": mod.parser.get_default("base_lr"), "cps_w_default": mod.parser.get_default("cps_w")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", required=True, type=Path, help="checkout of xmed-lab/DHC")
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(ROOT)}")
    a = ap.parse_args(argv)
    command = "python docs/scripts/released/dhc_dst_goldens.py --repo <DHC checkout>" + (" --write" if a.write else "")
    repo = a.repo.resolve()
    commit = repo_commit(repo)
    np.float = float  # removed in numpy 1.24; the release's GRL calls it
    saved = sys.argv
    code = dg.setup(repo)
    torch.set_num_threads(1)
    import models.vnet_dst as vnet_dst

    mod = dg.import_script(code, "dst", step_argv())
    golden = {
        **provenance("xmed-lab/DHC", commit, command),
        "grl": golden_grl(vnet_dst),
        "losses": golden_losses(mod),
        "init": golden_init(mod, vnet_dst),
        "forward": golden_forward(vnet_dst),
        "step": golden_step(mod),
        "optimizer": golden_optimizer(mod),
        "grl_iter": GRL_ITER,
        "pseudo_head_scale": PSEUDO_HEAD_SCALE,
    }
    sys.argv = saved
    write_golden("dhc_dst", golden, write=a.write)


if __name__ == "__main__":
    main()
