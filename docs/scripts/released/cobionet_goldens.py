"""Golden outputs of Co-BioNet's released code (himashi92/Co-BioNet, ``code/``: LA / Pancreas,
binary), for ``tests/test_released_cobionet.py``.

    python docs/scripts/released/cobionet_goldens.py --repo /path/to/Co-BioNet [--write]

imports the released modules from the checkout (``<repo>/code`` on sys.path; tensorboardX, h5py
and scikit-image are stubbed where missing - only the data loaders and the validation use them;
``.cuda()`` is a no-op; ``train_cobionet_semi.py`` is imported with a fake ``sys.argv``, its
defaults), runs the pieces below on CPU in fp32 with the fixed inputs and weights of
``tests/released_inputs_cobionet.py`` and prints (``--write``: writes)
``tests/golden/released/cobionet.json``. Nothing of the release is copied into the suite; the
test reads only the JSON.

Covered (released file):
* ``vnet``: networks/VNet.py VNet (``net_factory("vnet", mode="train")``: BatchNorm,
  has_dropout=True) forward in train mode (seeded Dropout3d) and eval mode, weights mapped by name.
* ``critic``: networks/critic.py Discriminator(in_channels=1) forward in train mode, its
  parameter / buffer layout and BN running statistics after the forward.
* ``losses``: utils/losses.py dice_loss, ``BCELoss`` (the supervised CE), loss_diff1 / loss_diff2
  (type of the result: a float), loss_mask, gen_loss, disc_loss: values and gradient checksums
  (and which inputs get none).
* ``step``: one step of train_cobionet_semi.py's loop body (:151-266; under ``if __name__ ==
  '__main__'``, so re-run here in the released order with the released objects and loss
  functions): three forward passes per segmenter, both losses, two backward passes and SGD
  steps, the critic "losses" (detached clones) and AdamW steps. ``iter_num`` 6000 (consistency
  weight 1). Loss terms, mask shares, gradient checksums of each segmenter after its backward,
  the critics' gradients at their step (None) and every network's change after the step.
* ``schedules``: CosineAnnealingLR(T_max) stepped per iteration (SGD and AdamW), the released
  ``max_epoch`` for Pancreas / LA (TwoStreamBatchSampler length), get_current_consistency_weight
  at iter_num // 150.
* ``optimizer``: the four optimisers' settings (defaults of optimizer_1 / dis_optimizer_1).

Not covered: data loading / augmentation, validation and best-checkpoint selection,
test_patch_ensemble's sliding window and largest-component post-processing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch
from _golden_io import ROOT, golden_path, provenance, repo_commit, write_golden
from torch import nn

from tests import released_inputs_cobionet as ri

GOLDEN = golden_path("cobionet")


# ----------------------------------------------------------------------------- loading the release
def _stub(name: str, **attrs) -> None:
    """A module ``name`` with ``attrs`` unless the real one imports."""
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod
    if "." in name:
        parent, child = name.rsplit(".", 1)
        setattr(sys.modules[parent], child, mod)


def setup(repo: Path) -> Path:
    code = repo / "code"
    sys.path.insert(0, str(code))
    _stub("tensorboardX", SummaryWriter=object)
    _stub("h5py", File=None)
    _stub("skimage")
    _stub("skimage.transform")
    _stub("skimage.measure", label=None)
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    return code


def import_train(code: Path, argv=()):
    saved = sys.argv
    sys.argv = ["train_cobionet_semi.py", *argv]
    spec = importlib.util.spec_from_file_location("released_train_cobionet_semi", code / "train_cobionet_semi.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.argv = saved
    return mod


def released_vnet(net_factory, width: int = ri.WIDTH):
    """net_factory's training VNet (BatchNorm, has_dropout=True) at width ``width`` (released: 16,
    fixed by net_factory: the class is built directly with net_factory's arguments)."""
    import networks.VNet as vnet_mod

    return vnet_mod.VNet(n_channels=1, n_classes=ri.NUM_CLASSES - 1, n_filters=width, normalization="batchnorm", has_dropout=True)


def tolist(t) -> list:
    return [float(v) for v in torch.as_tensor(t).reshape(-1)]


# ----------------------------------------------------------------------------- pieces
def golden_vnet(net_factory) -> dict:
    b = ri.step_batch(0)
    x = torch.cat([b["image_l"], b["image_u"]])
    out = {}
    for mode, train in (("train_dropout", True), ("eval", False)):
        net = released_vnet(net_factory)
        ri.fill(net, 1, ri.released_vnet_name)
        net.train(train)
        torch.manual_seed(7)
        with torch.no_grad():
            y = net(x)
        out[mode] = {"out": ri.checksum(y), "state": ri.state_checksum(net, ri.released_vnet_name)}
    return out


def golden_critic() -> dict:
    from networks.critic import Discriminator

    c = Discriminator()
    names = {k: list(v.shape) for k, v in c.state_dict().items()}
    ri.fill(c, 3, ri.released_critic_name, critic=True)
    x = ri.loss_inputs()["p1"]
    y = c(x)
    return {"names": names, "out": ri.checksum(y), "state": ri.state_checksum(c, ri.released_critic_name),
            "default_init_bias": [n for n, p in c.named_parameters() if n.endswith("bias") and "conv" in n and p.dim() == 1]}


def golden_losses(losses) -> dict:
    inp = ri.loss_inputs()
    BCE = nn.BCELoss()
    out = {}

    def run(name, fn, *tensors):
        ts = [t.clone().requires_grad_(True) for t in tensors]
        v = fn(*ts)
        rec = {"type": type(v).__name__, "value": float(v.detach()) if torch.is_tensor(v) else float(v)}
        if torch.is_tensor(v) and v.requires_grad:
            v.backward()
            rec["grads"] = [ri.checksum(t.grad) if t.grad is not None else None for t in ts]
        out[name] = rec

    y = inp["y"]
    run("sup_ce", lambda p: BCE(p.squeeze(1), y.float()), inp["p_l"])  # train_cobionet_semi.py:164
    run("sup_dice", lambda p: losses.dice_loss(p[:, 0, :, :, :], y == 1), inp["p_l"])  # :165
    run("diff1", lambda a, b: losses.loss_diff1(a, b), inp["p1"], inp["p2"])  # :179
    run("diff2", lambda a, b: losses.loss_diff2(a, b), inp["p1"], inp["p2"])  # :212
    run("mask", lambda a, b: losses.loss_mask(a, b, inp["c"], 0.2), inp["p1"], inp["p2"])  # :181
    run("gen", lambda d: losses.gen_loss(d, torch.ones_like(d)), inp["d_fake"])  # :192
    run("disc", lambda f, r: losses.disc_loss(f, r, torch.zeros_like(f), torch.ones_like(r)), inp["d_fake"], inp["d_real"])  # :193
    out["mask_share"] = float((inp["c"] > 0.2).float().mean())
    return out


def golden_step(mod) -> dict:
    """train_cobionet_semi.py:147-362 for one batch, in the released order."""
    from networks.critic import Discriminator

    args, losses = mod.args, mod.losses
    m1, m2 = released_vnet(None), released_vnet(None)
    ri.fill(m1, ri.SEED_S1, ri.released_vnet_name)
    ri.fill(m2, ri.SEED_S2, ri.released_vnet_name)
    c1, c2 = Discriminator(), Discriminator()
    ri.fill(c1, ri.SEED_C1, ri.released_critic_name, critic=True)
    ri.fill(c2, ri.SEED_C2, ri.released_critic_name, critic=True)
    optimizer_1 = torch.optim.SGD(m1.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=0.0001)  # :116-117
    optimizer_2 = torch.optim.SGD(m2.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=0.0001)
    dis_optimizer_1 = torch.optim.AdamW(c1.parameters(), lr=1e-4)  # :119-120
    dis_optimizer_2 = torch.optim.AdamW(c2.parameters(), lr=1e-4)
    CE = torch.nn.BCELoss()
    b = ri.step_batch(0)
    volume_batch = torch.cat([b["image_l"], b["image_u"]])
    label_batch = torch.cat([b["label_l"], torch.zeros_like(b["label_l"])])  # unlabeled labels: never read but for shapes
    labeled_bs = ri.N_L
    labeled_gt_set = label_batch[:labeled_bs, ...]
    labeled_set = volume_batch[:labeled_bs, ...]
    unlabeled_set = volume_batch[labeled_bs:, ...]
    torch.manual_seed(100)
    m1.train()
    l_outputs_np_1 = m1(labeled_set)
    u_outputs_np_1 = m1(unlabeled_set)
    m2.train()
    l_outputs_np_2 = m2(labeled_set)
    u_outputs_np_2 = m2(unlabeled_set)
    y_prob_1 = torch.sigmoid(l_outputs_np_1)
    y_all_1 = torch.sigmoid(m1(volume_batch))
    y_sig_1_u = torch.sigmoid(u_outputs_np_1)
    loss_seg_1 = CE(y_prob_1.squeeze(1), labeled_gt_set.float())
    loss_seg_dice_1 = losses.dice_loss(y_prob_1[:, 0, :, :, :], labeled_gt_set == 1)
    y_prob_2 = torch.sigmoid(l_outputs_np_2)
    y_all_2 = torch.sigmoid(m2(volume_batch))
    y_sig_2_u = torch.sigmoid(u_outputs_np_2)
    loss_seg_2 = CE(y_prob_2.squeeze(1), labeled_gt_set.float())
    loss_seg_dice_2 = losses.dice_loss(y_prob_2[:, 0, :, :, :], labeled_gt_set == 1)
    loss_sup_1 = args.lamda * (loss_seg_dice_1 + loss_seg_1)
    loss_sup_2 = args.lamda * (loss_seg_dice_2 + loss_seg_2)
    iter_num = ri.ITER_NUM
    consistency_weight = mod.get_current_consistency_weight(iter_num // 150)
    loss_dif_1 = mod.loss_diff1(y_sig_1_u, y_sig_2_u)
    critic_segs_1 = torch.sigmoid(c2(y_sig_2_u))
    masked_loss_1 = mod.loss_mask(y_sig_1_u, y_sig_2_u, critic_segs_1, args.t_m)
    target_real_1 = torch.ones_like(labeled_gt_set.unsqueeze(1))
    target_fake_1 = torch.zeros_like(label_batch.unsqueeze(1))
    g_critic_segs_1_1 = torch.sigmoid(c1(y_all_1))
    g_critic_segs_1_2 = torch.sigmoid(c1(labeled_gt_set.unsqueeze(1).float()))
    target_real_g_1 = torch.ones_like(label_batch.unsqueeze(1))
    loss_adversarial_gen_1 = mod.gen_loss(g_critic_segs_1_1, target_real_g_1)
    loss_adversarial_1 = mod.disc_loss(g_critic_segs_1_1, g_critic_segs_1_2, target_fake_1, target_real_1)
    loss_unsup_1 = loss_dif_1 + masked_loss_1 + args.mu * loss_adversarial_gen_1
    loss_1 = loss_sup_1 + consistency_weight * loss_unsup_1
    optimizer_1.zero_grad()
    loss_1.backward()
    rec = {"w": consistency_weight, "diff_type": type(loss_dif_1).__name__,
           "grads_1": ri.grads_checksum(m1.named_parameters(), ri.released_vnet_name),
           "m2_grads_after_loss_1": all(p.grad is None for p in m2.parameters()),
           "critic1_grads_after_loss_1": ri.grads_checksum(c1.named_parameters(), ri.released_critic_name)}
    optimizer_1.step()
    loss_dif_2 = mod.loss_diff2(y_sig_1_u, y_sig_2_u)
    critic_segs_2 = torch.sigmoid(c1(y_sig_1_u))
    masked_loss_2 = mod.loss_mask(y_sig_2_u, y_sig_1_u, critic_segs_2, args.t_m)
    g_critic_segs_2_1 = torch.sigmoid(c2(y_all_2))
    g_critic_segs_2_2 = torch.sigmoid(c2(labeled_gt_set.unsqueeze(1).float()))
    loss_adversarial_gen_2 = mod.gen_loss(g_critic_segs_2_1, target_real_g_1)
    loss_adversarial_2 = mod.disc_loss(g_critic_segs_2_1, g_critic_segs_2_2, target_fake_1, target_real_1)
    loss_unsup_2 = loss_dif_2 + masked_loss_2 + args.mu * loss_adversarial_gen_2
    loss_2 = loss_sup_2 + consistency_weight * loss_unsup_2
    optimizer_2.zero_grad()
    loss_2.backward()
    rec["grads_2"] = ri.grads_checksum(m2.named_parameters(), ri.released_vnet_name)
    optimizer_2.step()
    # :246-266 the critics' "losses": detached clones
    loss_adversarial_1 = loss_adversarial_1.clone().detach().requires_grad_(True)
    loss_adversarial_2 = loss_adversarial_2.clone().detach().requires_grad_(True)
    dis_optimizer_1.zero_grad()
    loss_adversarial_1.backward()
    rec["critic1_grad_none_at_step"] = all(p.grad is None for p in c1.parameters())
    dis_optimizer_1.step()
    dis_optimizer_2.zero_grad()
    loss_adversarial_2.backward()
    rec["critic2_grad_none_at_step"] = all(p.grad is None for p in c2.parameters())
    dis_optimizer_2.step()
    rec.update({
        "sup_1": float(loss_sup_1), "sup_2": float(loss_sup_2), "diff_1": float(loss_dif_1), "diff_2": float(loss_dif_2),
        "masked_1": float(masked_loss_1), "masked_2": float(masked_loss_2),
        "gen_1": float(loss_adversarial_gen_1), "gen_2": float(loss_adversarial_gen_2),
        "adv_1": float(loss_adversarial_1), "adv_2": float(loss_adversarial_2),
        "loss_1": float(loss_1), "loss_2": float(loss_2),
        "mask_share_1": float((critic_segs_1 > args.t_m).float().mean()), "mask_share_2": float((critic_segs_2 > args.t_m).float().mean()),
        "delta_1": ri.delta_checksum(m1, ri.SEED_S1, ri.released_vnet_name),
        "delta_2": ri.delta_checksum(m2, ri.SEED_S2, ri.released_vnet_name),
        "state_1": ri.state_checksum(m1, ri.released_vnet_name), "state_2": ri.state_checksum(m2, ri.released_vnet_name),
        "critic1_unchanged": all(torch.equal(p.detach(), ri.critic_tensor(ri.released_critic_name(n), p, ri.SEED_C1))
                                 for n, p in c1.named_parameters()),
        "critic2_unchanged": all(torch.equal(p.detach(), ri.critic_tensor(ri.released_critic_name(n), p, ri.SEED_C2))
                                 for n, p in c2.named_parameters()),
    })
    return rec


def golden_schedules(mod) -> dict:
    import dataloaders.dataset as ds

    out = {"t_max": ri.COSINE_T_MAX}
    for kind in ("sgd", "adamw"):
        p = nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.01) if kind == "sgd" else torch.optim.AdamW([p], lr=1e-4)
        sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=ri.COSINE_T_MAX)  # :133-136
        lrs = []
        for _ in range(ri.COSINE_STEPS):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sch.step()
        out[kind] = lrs
    for name, labelnum, max_samples in (("Pancreas_CT", 12, 62), ("LA", 8, 80), ("LA_16", 16, 80)):
        sampler = ds.TwoStreamBatchSampler(list(range(labelnum)), list(range(labelnum, max_samples)), 4, 4 - 2)  # :109
        out[f"epoch_{name}"] = {"labelnum": labelnum, "max_samples": max_samples, "len": len(sampler),
                                "max_epoch": 15000 // len(sampler) + 1}  # :128
    out["ramp"] = {str(i): mod.get_current_consistency_weight(i // 150) for i in ri.RAMP_ITERS}  # :177
    return out


def golden_optimizer(mod) -> dict:
    m = nn.Conv3d(1, 1, 1)
    sgd = torch.optim.SGD(m.parameters(), lr=mod.args.base_lr, momentum=0.9, weight_decay=0.0001)
    adamw = torch.optim.AdamW(m.parameters(), lr=1e-4)
    keep = ("lr", "momentum", "weight_decay", "nesterov", "dampening", "betas", "eps", "amsgrad")
    return {"sgd": {k: v for k, v in sgd.defaults.items() if k in keep}, "adamw": {k: v for k, v in adamw.defaults.items() if k in keep},
            "args": {k: getattr(mod.args, k) for k in ("base_lr", "consistency", "consistency_rampup", "lamda", "mu", "t_m",
                                                          "labeled_bs", "batch_size", "max_iteration")}}


# ----------------------------------------------------------------------------- main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", required=True, type=Path, help="checkout of himashi92/Co-BioNet")
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(ROOT)}")
    a = ap.parse_args(argv)
    command = "python docs/scripts/released/cobionet_goldens.py --repo <Co-BioNet checkout>" + (" --write" if a.write else "")
    repo = a.repo.resolve()
    commit = repo_commit(repo)
    code = setup(repo)
    torch.set_num_threads(1)
    mod = import_train(code)
    import utils.losses as losses

    golden = {
        **provenance("himashi92/Co-BioNet", commit, command),
        "vnet": golden_vnet(mod.net_factory),
        "critic": golden_critic(),
        "losses": golden_losses(losses),
        "step": golden_step(mod),
        "schedules": golden_schedules(mod),
        "optimizer": golden_optimizer(mod),
    }
    write_golden("cobionet", golden, write=a.write)


if __name__ == "__main__":
    main()
