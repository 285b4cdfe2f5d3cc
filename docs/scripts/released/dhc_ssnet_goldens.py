"""Golden outputs of DHC's released SS-Net (xmed-lab/DHC ``code/train_ssnet.py``, ``VNet4SSNet`` of
``code/models/vnet.py``), for ``tests/test_released_ssnet.py``.

    python docs/scripts/released/dhc_ssnet_goldens.py --repo /path/to/DHC [--commit b3dee97] [--write]

imports the released modules from the checkout (``dhc_goldens.setup``: ``<repo>/code`` on
sys.path, tensorboard stubbed, ``.cuda()`` a no-op; ``train_ssnet.py`` imported with a fake
``sys.argv``), runs the pieces below on CPU in fp32, one thread, with the fixed inputs and the
weights set by name of ``tests/released_inputs_ssnet.py``, and prints (``--write``: writes)
``tests/golden/released/dhc_ssnet.json``. Nothing of the release is copied into the suite.

Covered:
* ``network``: VNet4SSNet's train-mode forward (logits and the decoder map, with seeded dropout),
  its eval-mode forward (test.py: ``has_dropout=False``, eval), and the state-dict names.
* ``memory``: ``FeatureMemory.add_features_from_sample_learned`` on fixed features (a class above
  the 32-row limit, one below, one absent) with the released selectors in train mode.
* ``contrast``: ``contrastive_class_to_class_learned_memory`` on fixed features and memory: value,
  gradient checksums of the features and of every parameter group, the selectors' BatchNorm
  statistics after the call.
* ``l2_normalize``: ``_l2_normalize`` on a fixed tensor.
* ``step``: the first step of the training loop (train_ssnet.py:356-439; it sits under
  ``if __name__ == '__main__'``, so the body is re-run here in the released order with the
  released objects): forward, correct-prediction mask, memory update, both contrastive terms,
  Dice, VAT (``VAT3d(epi=10.0)``), loss, backward, the SGD of ``make_model_all``. fp32 instead
  of the forced autocast (CPU); ``-r -cr 0`` so cps_w is the constant ``-w``. Recorded: each
  loss term, the memory, per-group gradient checksums of each term and of the total, per-group
  parameter changes after the optimiser step and the BatchNorm buffers.
* ``schedule``: get_current_consistency_weight with and without ``-r`` and the values in force
  per epoch (set at the end of epoch e from e, train_ssnet.py:463-464).
* ``optimizer``: ``make_model_all``'s SGD settings; ``constants``: the values the script fixes in
  its main block (memory size, VAT step and size, contrastive weight), read from the source with
  their line numbers.

Not covered: data loading / augmentation, evaluation, AMP (CPU).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import dhc_goldens  # setup, import_script
import numpy as np
import torch
import torch.nn.functional as F
from _golden_io import ROOT, golden_path, provenance, repo_commit, write_golden

from tests import released_inputs_dhc as ri
from tests import released_inputs_ssnet as rs

GOLDEN = golden_path("dhc_ssnet")
C = rs.NUM_CLASSES
MAX_EPOCH = 10


def tolist(t) -> list:
    return [float(v) for v in torch.as_tensor(t).reshape(-1)]


def step_argv() -> list[str]:
    return ["--base_lr", str(rs.LR), "-w", str(rs.CPS_W), "-ep", str(MAX_EPOCH), "-r", "-cr", "0"]


def make_model(mod, dropout: bool = True):
    """``make_model_all()`` (train_ssnet.py:110-125) at width WIDTH, weights set by name."""
    mod.config.n_filters, mod.config.num_cls = rs.WIDTH, C
    model, opt = mod.make_model_all()
    if not dropout:
        model.has_dropout = False
    rs.fill_released(model)
    return model, opt


def bn_buffers(model) -> dict:
    """Checksum of the BatchNorm running statistics per group (suite names, sorted)."""
    rows: dict[str, list] = {g: [] for g in rs.GROUPS}
    for k, v in model.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            s = rs.suite_name(k)
            rows[rs.group_of(s)].append((s, v.reshape(-1).double()))
    return {g: ri.checksum(torch.cat([v for _, v in sorted(r, key=lambda t: t[0])])) for g, r in rows.items() if r}


# ----------------------------------------------------------------------------- pieces
def golden_network(mod, vnet_mod) -> dict:
    b = ri.step_batch(0)
    x = torch.cat([b["image_l"], b["image_u"]])
    model, _ = make_model(mod)
    model.train()
    torch.manual_seed(7)
    with torch.no_grad():
        out, emb = model(x)
    # test.py:85-91: VNet4SSNet(has_dropout=False) in eval mode returns the logits only
    test_model = vnet_mod.VNet4SSNet(n_channels=1, n_classes=C, n_filters=rs.WIDTH, normalization="batchnorm", has_dropout=False)
    rs.fill_released(test_model)
    test_model.eval()
    with torch.no_grad():
        y = test_model(x)
    return {"train": {"out": ri.checksum(out), "embedding": ri.checksum(emb)}, "eval": ri.checksum(y),
            "state_names": sorted(rs.suite_name(k) for k in model.state_dict())}


def golden_memory(mod) -> dict:
    model, _ = make_model(mod)
    model.train()
    inp = rs.memory_inputs()
    mem = mod.FeatureMemory(elements_per_class=32, n_classes=C)  # train_ssnet.py:329
    mem.add_features_from_sample_learned(model, inp["features"], inp["labels"])
    rows = {str(c): (None if m is None else [tolist(r) for r in torch.as_tensor(m)]) for c, m in enumerate(mem.memory)}
    return {"memory": rows, "selector_buffers": bn_buffers(model)}


def golden_contrast(mod) -> dict:
    model, _ = make_model(mod)
    model.train()
    inp = rs.contrast_inputs()
    feats = inp["features"].clone().requires_grad_(True)
    memory = [None if m is None else m.numpy() for m in inp["memory"]]
    loss = mod.contrastive_class_to_class_learned_memory(model, feats, inp["labels"], len(memory), memory)
    params = list(model.named_parameters())
    loss.backward()
    # the memory selectors' gradient: the released memory weights are w / w, so rounding noise at most
    mem_grad = max(float(p.grad.abs().max()) for n, p in params if n.startswith("contrastive_class_selector_memory") and p.grad is not None)
    return {"value": float(loss.detach()), "grad_features": ri.checksum(feats.grad),
            "grads": rs.grads_by_group(params, map_name=rs.suite_name), "buffers": bn_buffers(model),
            "memory_selector_grad_max": mem_grad}


def golden_l2(mod) -> dict:
    g = ri._gen("ssnet-l2")
    d = torch.rand(2, 1, *ri.PATCH, generator=g).sub(0.5)
    d[1] = 0.0  # a zero sample stays zero (norm 0 + 1e-8)
    return {"out": ri.checksum(mod._l2_normalize(d.clone())), "norms": tolist(mod._l2_normalize(d.clone()).flatten(1).norm(dim=1))}


def golden_step(mod) -> dict:
    """The loop body of train_ssnet.py:356-439 (fp32), one step, then the optimiser step."""
    model, optimizer = make_model(mod)
    model.train()
    prototype_memory = mod.FeatureMemory(elements_per_class=32, n_classes=C)  # :329
    dice_loss = mod.SoftDiceLoss(smooth=1e-8, do_bg=True)  # :341
    adv_loss = mod.VAT3d(epi=10.0)  # :342
    cps_w = mod.get_current_consistency_weight(0)  # :349
    b = ri.step_batch(0)
    image_l, label_l, image_u = b["image_l"], b["label_l"].unsqueeze(1), b["image_u"]
    optimizer.zero_grad()
    image = torch.cat([image_l, image_u], dim=0)
    tmp_bs = image.shape[0] // 2
    torch.manual_seed(rs.STEP_SEED)
    outputs, embedding = model(image)
    outputs_soft = F.softmax(outputs, dim=1)
    labeled_features = embedding[:tmp_bs, ...]
    unlabeled_features = embedding[tmp_bs:, ...]
    y = outputs_soft[:tmp_bs]
    true_labels = label_l.squeeze(1)
    _, prediction_label = torch.max(y, dim=1)
    _, pseudo_label = torch.max(outputs_soft[tmp_bs:], dim=1)
    mask_prediction_correctly = ((prediction_label == true_labels).float() * (prediction_label > 0).float()).bool()
    labeled_features = labeled_features.permute(0, 2, 3, 4, 1)
    labels_correct = true_labels[mask_prediction_correctly]
    labeled_features_correct = labeled_features[mask_prediction_correctly, ...]
    with torch.no_grad():
        model.eval()
        proj_labeled_features_correct = model.projection_head(labeled_features_correct)
        model.train()
    prototype_memory.add_features_from_sample_learned(model, proj_labeled_features_correct, labels_correct)
    labeled_features_all = labeled_features.reshape(-1, labeled_features.size()[-1])
    labeled_labels = true_labels.reshape(-1)
    proj_labeled_features_all = model.projection_head(labeled_features_all)
    pred_labeled_features_all = model.prediction_head(proj_labeled_features_all)
    loss_contr_labeled = mod.contrastive_class_to_class_learned_memory(model, pred_labeled_features_all, labeled_labels, C,
                                                                       prototype_memory.memory)
    unlabeled_features = unlabeled_features.permute(0, 2, 3, 4, 1).reshape(-1, labeled_features.size()[-1])
    pseudo_label = pseudo_label.reshape(-1)
    proj_feat_unlabeled = model.projection_head(unlabeled_features)
    pred_feat_unlabeled = model.prediction_head(proj_feat_unlabeled)
    loss_contr_unlabeled = mod.contrastive_class_to_class_learned_memory(model, pred_feat_unlabeled, pseudo_label, C,
                                                                         prototype_memory.memory)
    loss_seg = F.cross_entropy(outputs[:tmp_bs], true_labels)  # :425, computed and never used
    loss_seg_dice = dice_loss(y, true_labels)
    loss_lds = adv_loss(model, image)
    loss = loss_seg_dice + cps_w * (loss_lds + 0.1 * (loss_contr_labeled + loss_contr_unlabeled))

    params = list(model.named_parameters())
    term_grads = {}
    for name, term in (("dice", loss_seg_dice), ("lds", loss_lds), ("contr_l", loss_contr_labeled), ("contr_u", loss_contr_unlabeled)):
        gs = torch.autograd.grad(term, [p for _, p in params], allow_unused=True, retain_graph=True)
        term_grads[name] = rs.grads_by_group(params, gs, rs.suite_name)
    loss.backward()
    rec = {
        "cps_w": cps_w,
        "lr": optimizer.param_groups[0]["lr"],
        "n_correct": int(mask_prediction_correctly.sum()),
        "correct_per_class": np.bincount(labels_correct.numpy(), minlength=C).tolist(),
        "memory": {str(c): (None if m is None else {"rows": int(m.shape[0]), "checksum": ri.checksum(torch.as_tensor(m))})
                   for c, m in enumerate(prototype_memory.memory)},
        "loss": float(loss.detach()), "dice": float(loss_seg_dice.detach()), "lds": float(loss_lds.detach()),
        "contr_l": float(loss_contr_labeled.detach()), "contr_u": float(loss_contr_unlabeled.detach()),
        "ce_unused": float(loss_seg.detach()),
        "forward": {"out": ri.checksum(outputs), "embedding": ri.checksum(embedding)},
        "term_grads": term_grads,
        "grads": rs.grads_by_group(params, map_name=rs.suite_name),
    }
    optimizer.step()
    rec["delta"] = rs.delta_by_group(model, map_name=rs.suite_name)
    rec["buffers"] = bn_buffers(model)
    return rec


def golden_schedule(code: Path) -> dict:
    ramp = dhc_goldens.import_script(code, "ssnet", ["-w", "0.1", "-ep", str(MAX_EPOCH), "-r"])
    flat = dhc_goldens.import_script(code, "ssnet", ["-ep", str(MAX_EPOCH)])
    utils = sys.modules["utils"]
    epochs = list(range(MAX_EPOCH + 3))
    in_force, cps_w, lr = [], ramp.get_current_consistency_weight(0), 0.01
    for e in range(MAX_EPOCH + 1):  # train_ssnet.py:350, 463-464
        in_force.append({"epoch": e, "lr": lr, "cps_w": cps_w})
        lr = utils.poly_lr(e, MAX_EPOCH, 0.01, 0.9)
        cps_w = ramp.get_current_consistency_weight(e)
    return {"max_epoch": MAX_EPOCH, "base_lr": 0.01, "cps_w": 0.1, "epochs": epochs,
            "ramped": [ramp.get_current_consistency_weight(e) for e in epochs],
            "argparse_default": {"cps_w": [flat.get_current_consistency_weight(e) for e in epochs], "base_lr": flat.args.base_lr},
            "in_force": in_force}


def golden_constants(code: Path) -> dict:
    """Values fixed in train_ssnet.py's main block, with their lines."""
    lines = (code / "train_ssnet.py").read_text().splitlines()
    pats = {
        "memory_size": r"FeatureMemory\(elements_per_class=(\d+)",
        "vat_eps": r"adv_loss\s*=\s*VAT3d\(epi=([\d.]+)\)",
        "contrast_w": r"cps_w \* \(loss_lds \+ ([\d.]+) \* \(loss_contr_labeled",
        "vat_xi_default": r"def __init__\(self, xi=([\d.]+), epi=[\d.]+, ip=\d+\)",
        "vat_iters_default": r"def __init__\(self, xi=[\d.]+, epi=[\d.]+, ip=(\d+)\)",
    }
    out = {}
    for k, p in pats.items():
        hits = [(i + 1, m.group(1)) for i, line in enumerate(lines) if (m := re.search(p, line))]
        assert len(hits) == 1, (k, hits)
        out[k] = {"value": float(hits[0][1]), "where": f"code/train_ssnet.py:{hits[0][0]}"}
    init = [i + 1 for i, line in enumerate(lines) if re.match(r"^\s*\w+\s*=\s*(kaiming|xavier)_normal_init_weight\(", line)]
    out["init_calls"] = init  # active initialiser calls (none: PyTorch's default)
    return out


def golden_optimizer(mod) -> dict:
    _, opt = make_model(mod)
    return {k: opt.defaults[k] for k in ("momentum", "weight_decay", "nesterov", "dampening")}


# ----------------------------------------------------------------------------- main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", required=True, type=Path, help="checkout of xmed-lab/DHC")
    ap.add_argument("--commit", default=None, help="commit of the checkout when it is not a git repository")
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(ROOT)}")
    a = ap.parse_args(argv)
    command = "python docs/scripts/released/dhc_ssnet_goldens.py --repo <DHC checkout> --write"
    repo = a.repo.resolve()
    commit = repo_commit(repo, a.commit)
    saved_argv = sys.argv
    code = dhc_goldens.setup(repo)
    torch.set_num_threads(1)
    for alias, typ in (("float", float), ("int", int), ("bool", bool)):  # removed from numpy 1.24; harmless if unused
        if alias not in np.__dict__:
            setattr(np, alias, typ)
    import models.vnet as vnet_mod

    mod = dhc_goldens.import_script(code, "ssnet", step_argv())
    golden = {
        **provenance("xmed-lab/DHC", commit, command),
        "network": golden_network(mod, vnet_mod),
        "memory": golden_memory(mod),
        "contrast": golden_contrast(mod),
        "l2_normalize": golden_l2(mod),
        "step": golden_step(mod),
        "optimizer": golden_optimizer(mod),
        "constants": golden_constants(code),
        "schedule": golden_schedule(code),
    }
    sys.argv = saved_argv
    write_golden("dhc_ssnet", golden, write=a.write)


if __name__ == "__main__":
    main()
