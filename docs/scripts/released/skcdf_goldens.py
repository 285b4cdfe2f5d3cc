"""Golden outputs of SKCDF's released code (yinguanchun/SKCDF ``SKCDF/code/train_skcdf.py``,
``SKCDF/code/models/SKCDF.py``, ``SKCDF/code/utils/loss.py``), for ``tests/test_released_skcdf.py``.

    python docs/scripts/released/skcdf_goldens.py --repo /path/to/SKCDF [--write]

Loads the release as ``dhc_goldens.py`` does (``<repo>/SKCDF/code`` on sys.path, ``.cuda()`` a
no-op, ``train_skcdf.py`` imported with a fake ``sys.argv``); ``tensorboardX`` is stubbed and
``einops`` (not installed here) is served by torch's own ``functorch.einops.rearrange`` plus a
``repeat`` for the one pattern the release uses. Runs on CPU in fp32 (the release has no
autocast) with the inputs of ``tests/released_inputs_skcdf.py`` and writes
``tests/golden/released/skcdf.json``. Nothing of the release is copied into the suite.

Covered:
* ``blocks``: ``Cross_Attention_Local_Block`` / ``Cross_Attention_Global_Block`` on fixed
  bottleneck maps (4, 32, 4, 8, 8): "labeled" and "unlabeled" modes in train mode (seeded
  attention dropout) and "unlabeled" in eval mode; outputs, gradients of sum(w * out) w.r.t.
  the input and the block parameters.
* ``forward``: the whole network at the release's 64x128x128 patch (n_filters 2): both heads,
  "labeled" (2 + 2 images) and "unlabeled" (2 images) in train mode (Dropout3d and attention
  dropout seeded), "unlabeled" in eval mode (test.py).
* ``init``: ``xavier_normal_init_weight`` (train_skcdf.py:67-74, 183) on the released network:
  statistics per part and layer type (the unused ``map_in`` convolutions left out).
* ``keep_ratio``: train_skcdf.py:190-206 over a fake labeled set of 5 cases (the loop stops at
  ``num_sample = 4``), and ``ir22`` (line 267) per epoch.
* ``losses``: ``make_loss_function('w_ce+dice')`` (``DC_and_CE_loss``) plain and on masked
  logits / labels as lines 259 / 276 call it: values and gradient checksums.
* ``blend``: the three decoder blends of lines 221-238 on a filled network.
* ``step``: one iteration of the loop body (lines 221-282) in epoch ``EPOCH`` with the released
  objects (``make_vnet_decouple_attention_abc``, ``make_loss_function``): loss terms, mask
  shares, gradient checksums per part, the network after the SGD step.
* ``schedules``: ``get_current_consistency_weight`` and ``utils.poly_lr`` per epoch, and the
  values in force in each epoch (set at the end of epoch e - 1, lines 302-303).
* ``released_keys``: the released network's state-dict keys (for the name map).
* ``optimizer``: the SGD of ``make_vnet_decouple_attention_abc`` and the argparse defaults.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import dhc_goldens as dg
import numpy as np
import torch
from _golden_io import ROOT, golden_path, provenance, repo_commit, write_golden

from tests import released_inputs_dhc as ri
from tests import released_inputs_skcdf as rs

GOLDEN = golden_path("skcdf")
SEED_NET, SEED_STEP = 21, 22


def einops_shim() -> None:
    """``einops.rearrange`` (torch's implementation) and ``einops.repeat`` for 'n bc -> r n bc'."""
    from functorch.einops import rearrange

    def repeat(t, pattern, **sizes):
        if " ".join(pattern.split()) != "n bc -> r n bc":
            raise NotImplementedError(pattern)
        return t.unsqueeze(0).expand(sizes["r"], *t.shape)

    mod = types.ModuleType("einops")
    mod.rearrange, mod.repeat = rearrange, repeat
    sys.modules["einops"] = mod
    tbx = types.ModuleType("tensorboardX")
    tbx.SummaryWriter = object
    sys.modules["tensorboardX"] = tbx


def setup(repo: Path) -> Path:
    einops_shim()
    dg.setup(repo / "SKCDF")  # puts SKCDF/code on sys.path, stubs tensorboard, .cuda() no-op
    return repo / "SKCDF" / "code"


def step_argv() -> list[str]:
    return ["--base_lr", str(rs.LR), "-w", str(rs.CPS_W), "-ep", str(rs.MAX_EPOCH), "-s", str(rs.EMA_W)]


def released_net(model_mod, dropout: bool = True):
    return model_mod.VNet_Decouple_Attention_ABC(n_channels=1, n_classes=rs.NUM_CLASSES, n_filters=rs.NF,
                                                 normalization="batchnorm", has_dropout=dropout)


def named_grads(named, prefix: str = "") -> dict:
    return ri.grads_checksum([(n, p) for n, p in named if rs.suite_name(prefix + n) is not None],
                             lambda n: rs.suite_name(prefix + n))


def golden_blocks(model_mod) -> dict:
    x5 = rs.bottleneck_input()
    c = 16 * rs.NF
    out = {}
    for key, cls in (("local_attn.", model_mod.Cross_Attention_Local_Block), ("global_attn.", model_mod.Cross_Attention_Global_Block)):
        prefix = rs.block_prefix(key)
        rec = {}
        for mode, train in (("labeled", True), ("unlabeled", True), ("unlabeled_eval", False)):
            block = cls(num_heads=rs.HEADS, embedding_channels=c, attention_dropout_rate=0.1)
            rs.fill_released(block, SEED_NET, prefix)
            block.train(train)
            x = x5.clone().requires_grad_(True)
            torch.manual_seed(5)
            y = block(x, mode.split("_")[0])
            (y * rs.block_loss_weights(y.shape[0])).sum().backward()
            rec[mode] = {"out": rs.checksum(y), "grad_x": rs.checksum(x.grad),
                         "grads": named_grads(block.named_parameters(), prefix)}
        out[key] = rec
    return out


def golden_forward(model_mod) -> dict:
    b = rs.step_batch(0)
    x = torch.cat([b["image_l"], b["image_u"]])
    out = {}
    for case, mode, train, inp in (("train_labeled", "labeled", True, x), ("train_unlabeled", "unlabeled", True, b["image_u"]),
                                   ("eval_unlabeled", "unlabeled", False, b["image_u"])):
        net = released_net(model_mod)
        rs.fill_released(net, SEED_NET)
        net.train(train)
        torch.manual_seed(7)
        with torch.no_grad():
            main, abc = net(inp, pred_type=mode)
        out[case] = {"main": rs.checksum(main), "abc": rs.checksum(abc)}
    return out


def golden_init(mod, model_mod) -> dict:
    torch.manual_seed(0)
    net = mod.xavier_normal_init_weight(released_net(model_mod))
    for block in (net.cross_attention_local, net.cross_attention_global):
        block.token_learner.map_in = torch.nn.Identity()  # unused in forward; the suite has none
    parts = {"encoder": net.encoder, "decoder_l": net.decoder_l, "decoder_u": net.decoder_u,
             "local_attn": net.cross_attention_local, "global_attn": net.cross_attention_global}
    return {k: rs.module_stats(v) for k, v in parts.items()}


def keep_ratio(training_set, num_cls: int) -> np.ndarray:
    """train_skcdf.py:190-205 (under ``__main__``, re-run here in its order)."""
    num_sample = 4
    loop = 0
    class_size = [0 for c in range(num_cls)]
    for sample in training_set:
        label = sample["label"]
        for i in range(num_cls):
            num = np.sum(label == i)
            class_size[i] = class_size[i] + num
        loop = loop + 1
        if loop == num_sample:
            break
    return min(class_size) / np.array(class_size)


def golden_keep_ratio() -> dict:
    cases = [{"image": None, "label": c} for c in rs.labeled_cases()]
    ir2 = torch.tensor(keep_ratio(cases, rs.NUM_CLASSES))
    per_epoch = [(1 - (e / rs.MAX_EPOCH) * (1 - ir2)).tolist() for e in range(rs.MAX_EPOCH + 1)]  # line 267
    return {"ir2": ir2.tolist(), "ir22": per_epoch}


def golden_losses(mod) -> dict:
    inp = rs.mask_inputs()
    label = inp["label"].unsqueeze(1)
    out = {}
    for name, masked in (("dc_ce", False), ("dc_ce_masked", True)):
        f = mod.make_loss_function(mod.args.sup_loss)
        z = inp["logits"].clone().requires_grad_(True)
        v = f(z * inp["mask"], label * inp["mask"]) if masked else f(z, label)
        v.backward()
        out[name] = {"value": float(v.detach()), "grad": rs.checksum(z.grad)}
    return out


def blend(model, ema_w: float) -> None:
    """train_skcdf.py:221-238 (the start of each iteration), in its order."""
    for out_conv9_name, out_conv9_params in model.decoder_l.out_conv9.named_parameters():
        if out_conv9_name in model.decoder_l.out_conv9_abc.state_dict().keys():
            out_conv9_abc_params = model.decoder_l.out_conv9_abc.state_dict()[out_conv9_name]
            if out_conv9_params.shape == out_conv9_abc_params.shape:
                out_conv9_params.data = ema_w * out_conv9_params.data + (1 - ema_w) * out_conv9_abc_params.data
    for decoder_u_name, decoder_u_params in model.decoder_u.named_parameters():
        if decoder_u_name in model.decoder_l.state_dict().keys():
            decoder_l_params = model.decoder_l.state_dict()[decoder_u_name]
            if decoder_u_params.shape == decoder_l_params.shape:
                decoder_u_params.data = ema_w * decoder_u_params.data + (1 - ema_w) * decoder_l_params.data
    for out_conv9_name, out_conv9_params in model.decoder_u.out_conv9.named_parameters():
        if out_conv9_name in model.decoder_u.out_conv9_abc.state_dict().keys():
            out_conv9_abc_params = model.decoder_u.out_conv9_abc.state_dict()[out_conv9_name]
            if out_conv9_params.shape == out_conv9_abc_params.shape:
                out_conv9_params.data = ema_w * out_conv9_params.data + (1 - ema_w) * out_conv9_abc_params.data


def part_checksums(model) -> dict:
    sd = {rs.suite_name(k): v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd = {k: v for k, v in sd.items() if k is not None}
    out = {}
    for part in ("dec_l.", "dec_u."):
        keys = sorted(k for k in sd if k.startswith(part))
        out[part[:-1]] = ri.checksum(torch.cat([sd[k].reshape(-1).double() for k in keys]))
    return out


def golden_blend(model_mod) -> dict:
    net = released_net(model_mod)
    rs.fill_released(net, SEED_NET)
    blend(net, rs.EMA_W)
    return part_checksums(net)


_PARTS = {"encoder": ("enc.", "down."), "local_attn": ("local_attn.",), "global_attn": ("global_attn.",),
          "dec_l": ("dec_l.",), "dec_u": ("dec_u.",)}


def golden_step(mod) -> dict:
    """One iteration of train_skcdf.py's loop (lines 221-282) in epoch EPOCH, in fp32."""
    mod.config.n_filters = rs.NF
    model, optimizer = mod.make_vnet_decouple_attention_abc()
    model = mod.xavier_normal_init_weight(model)
    rs.fill_released(model, SEED_STEP)
    model.train()
    sup_loss_func = mod.make_loss_function(mod.args.sup_loss)
    unsup_loss_func = mod.make_loss_function(mod.args.cps_loss)
    num_cls = rs.NUM_CLASSES
    ir2 = torch.tensor(keep_ratio([{"label": c} for c in rs.labeled_cases()], num_cls))
    epoch_num = rs.EPOCH
    cps_w = mod.get_current_consistency_weight(epoch_num - 1)  # in force in epoch e: set at the end of e - 1
    optimizer.param_groups[0]["lr"] = mod.poly_lr(epoch_num - 1, mod.args.max_epoch, mod.args.base_lr, 0.9)
    b = rs.step_batch(0)
    torch.manual_seed(100)
    blend(model, mod.args.ema_w)
    optimizer.zero_grad()
    image_l, label_l, image_u = b["image_l"], b["label_l"].unsqueeze(1), b["image_u"]
    image = torch.cat([image_l, image_u], dim=0)
    tmp_bs = image.shape[0] // 2
    output_A, output_A_abc = model(image, pred_type="labeled")
    output_l = output_A[:tmp_bs, ...]
    output_l_abc = output_A_abc[:tmp_bs, ...]
    label_l_prob = label_l.to(dtype=torch.float64).detach()
    for i in range(num_cls):
        label_l_prob = torch.where(label_l_prob == i, ir2[i], label_l_prob)
    maskforbalance = torch.bernoulli(label_l_prob.detach())
    sup_main = sup_loss_func(output_l, label_l)
    sup_abc = sup_loss_func(output_l_abc * maskforbalance, label_l * maskforbalance)
    L_sup = sup_main + sup_abc
    pseudo_label_prob = output_A[tmp_bs:, ...]
    pseudo_label_prob_abc = output_A_abc[tmp_bs:, ...]
    pseudo_label = torch.argmax(pseudo_label_prob, dim=1, keepdim=True).long()
    pseudo_label_abc = torch.argmax(pseudo_label_prob_abc, dim=1, keepdim=True).long()
    ir22 = 1 - (epoch_num / mod.args.max_epoch) * (1 - ir2)
    pseudo_label_abc_prob = pseudo_label_abc.to(dtype=torch.float64).detach()
    for i in range(num_cls):
        pseudo_label_abc_prob = torch.where(pseudo_label_abc_prob == i, ir22[i], pseudo_label_abc_prob)
    maskforbalance_u = torch.bernoulli(pseudo_label_abc_prob.detach())
    output_u, output_u_abc = model(image_u, pred_type="unlabeled")
    unsup_main = unsup_loss_func(output_u, pseudo_label.detach())
    unsup_abc = unsup_loss_func(output_u_abc * maskforbalance_u, pseudo_label_abc.detach() * maskforbalance_u)
    L_u = unsup_main + unsup_abc
    loss = L_sup + cps_w * L_u
    loss.backward()
    rec = {"cps_w": cps_w, "lr": optimizer.param_groups[0]["lr"], "loss": float(loss.detach()), "sup": float(L_sup.detach()),
           "unsup": float(L_u.detach()), "sup_main": float(sup_main.detach()), "sup_abc": float(sup_abc.detach()),
           "unsup_main": float(unsup_main.detach()), "unsup_abc": float(unsup_abc.detach()),
           "keep_l": float(maskforbalance.mean()), "keep_u": float(maskforbalance_u.mean()),
           "pseudo": rs.checksum(pseudo_label.double()), "pseudo_abc": rs.checksum(pseudo_label_abc.double()), "grads": {}}
    named = [(n, p) for n, p in model.named_parameters() if rs.suite_name(n) is not None]
    for part, prefixes in _PARTS.items():
        rec["grads"][part] = ri.grads_checksum([(n, p) for n, p in named if rs.suite_name(n).startswith(prefixes)], rs.suite_name)
    optimizer.step()
    optimizer.zero_grad()
    rec["after"] = ri.state_checksum(_Named(model), None)
    return rec


class _Named(torch.nn.Module):
    """The released network's tensors under suite names (``map_in`` left out), for ``ri.state_checksum``."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def state_dict(self, *a, **k):
        return {rs.suite_name(n): v for n, v in self.m.state_dict().items() if rs.suite_name(n) is not None}

    def named_parameters(self, *a, **k):
        return [(rs.suite_name(n), p) for n, p in self.m.named_parameters() if rs.suite_name(n) is not None]


def golden_schedules(mod, utils_mod) -> dict:
    E = mod.args.max_epoch
    w = [mod.get_current_consistency_weight(e) for e in range(E + 1)]
    lr = [utils_mod.poly_lr(e, E, mod.args.base_lr, 0.9) for e in range(E + 1)]
    # lines 208, 302-303: epoch 0 runs with the initial values, epoch e >= 1 with those of e - 1
    in_force_w = [mod.get_current_consistency_weight(0)] + w[:-1]
    in_force_lr = [mod.args.base_lr] + lr[:-1]
    return {"max_epoch": E, "cps_w": w, "poly_lr": lr, "in_force_cps_w": in_force_w, "in_force_lr": in_force_lr}


def golden_optimizer(mod) -> dict:
    mod.config.n_filters = rs.NF
    _, opt = mod.make_vnet_decouple_attention_abc()
    p = mod.parser
    return {**{k: opt.defaults[k] for k in ("momentum", "weight_decay", "nesterov", "dampening")},
            **{f"{k}_default": p.get_default(k) for k in ("base_lr", "cps_w", "ema_w", "max_epoch", "batch_size", "cps_loss",
                                                          "sup_loss", "consistency_rampup")},
            "n_filters_synapse": 32, "patch_synapse": [64, 128, 128]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", required=True, type=Path, help="checkout of yinguanchun/SKCDF")
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(ROOT)}")
    a = ap.parse_args(argv)
    command = "python docs/scripts/released/skcdf_goldens.py --repo <SKCDF checkout>" + (" --write" if a.write else "")
    repo = a.repo.resolve()
    commit = repo_commit(repo)
    saved = sys.argv
    code = setup(repo)
    torch.set_num_threads(1)
    import models.SKCDF as model_mod
    import utils as utils_mod
    from utils.config import Config

    cfg = Config("synapse")
    assert (cfg.n_filters, tuple(cfg.patch_size), cfg.num_cls) == (32, (64, 128, 128), 14)
    mod = dg.import_script(code, "skcdf", step_argv())
    golden = {
        **provenance("yinguanchun/SKCDF", commit, command),
        "blocks": golden_blocks(model_mod),
        "forward": golden_forward(model_mod),
        "init": golden_init(mod, model_mod),
        "keep_ratio": golden_keep_ratio(),
        "losses": golden_losses(mod),
        "blend": golden_blend(model_mod),
        "step": golden_step(mod),
        "schedules": golden_schedules(mod, utils_mod),
        "optimizer": golden_optimizer(mod),
        "seeds": {"net": SEED_NET, "step": SEED_STEP},
        "released_keys": sorted(released_net(model_mod).state_dict()),
    }
    sys.argv = saved
    write_golden("skcdf", golden, write=a.write)


if __name__ == "__main__":
    main()
