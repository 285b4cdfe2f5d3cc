"""Golden outputs of GenericSSL's released A&D code (xmed-lab/GenericSSL), for ``tests/test_released_genericssl.py``.

    python docs/scripts/released/genericssl_goldens.py --repo /path/to/GenericSSL [--write]

imports the released modules from the checkout (``<repo>/code`` on sys.path; tensorboard, cv2,
h5py, albumentations and batchgenerators - imported by utils / StrongAug, used by no piece
below - are stubbed; ``.cuda()`` is a no-op; ``train_diffusion.py`` is imported with a fake
``sys.argv``), runs the pieces below on CPU in fp32 (the training step in fp64) with the fixed inputs and weights of
``tests/released_inputs_genericssl.py`` and prints (``--write``: writes)
``tests/golden/released/genericssl.json``. Nothing of the release is copied into the suite.

Covered (released file):
* ``released_keys``: DiffVNet's state-dict keys (for the name map's check).
* ``schedule``: diff_vnet.py DiffVNet's ``diffusion`` (linear betas, T = 1000, all steps kept) and
  ``sample_diffusion`` (10 spaced steps): tables at a few t, checksums of whole tables, the
  float32 q_sample coefficients; respace.py space_timesteps for a few counts.
* ``embedding``: get_timestep_embedding(t, 128).
* ``q_sample``: ``diffusion.q_sample`` of the labeled x_0 = 2 onehot - 1 at fixed t and eps.
* ``forward``: DiffVNet pred_type D_xi_l / D_psi_l / D_theta_u in eval mode and in train mode
  (has_dropout, every Dropout3d drawing after torch.manual_seed(7)), + BN running statistics.
* ``ddim``: ``sample_diffusion.ddim_sample_loop(denoise_model, ..., noise=x_T)["pred_xstart"]``
  (what pred_type="ddim_sample" returns, with x_T given instead of drawn), eval mode.
* ``smoothing``: utils GaussianSmoothing(C, 3, 1) kernel and output.
* ``difficulty``: train_diffusion.py Difficulty(C, 50).cal_weights over the 4 fake batches of
  tests/released_inputs_dhc.py (weights and state).
* ``losses``: make_loss_function("w_ce+dice") unweighted (L_deno, L_u) and after
  update_weight (L_diff): values and gradient checksums.
* ``aggregate``: the D_theta EMA loop of train_diffusion.py:235-240 once.
* ``step``: one iteration of train_diffusion.py's loop (:233-291, under ``__main__``, so re-run
  here in the released order with the released objects: make_model_all's model and SGD), in
  float64 instead of the forced autocast and with a 3-step sampler (``golden_step`` says why), every Dropout3d at p = 0 (the release has no switch; random
  masks cannot be shared), ``-w MU -cr 0`` (mu constant). Its random draws are fed, not drawn:
  t and eps through ``diffusion.q_sample(x, t, noise)`` (what pred_type="q_sample" calls),
  x_T through ``ddim_sample_loop(noise=)``, and the Gumbel noise g as softmax(p + g) (what
  ``F.gumbel_softmax(p, dim=1)`` computes; checked here against it under one seed).
* ``schedules``: get_current_mu and utils.poly_lr, and the values in force per epoch.
* ``optimizer``: make_model_all's SGD settings.

Not covered: data loading / StrongAug, validation / best-checkpoint selection, test.py's sliding
window (the suite's protocol), AMP.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _golden_io import ROOT, golden_path, provenance, repo_commit, write_golden
from torch import nn

from tests import released_inputs_dhc as rd
from tests import released_inputs_genericssl as rg

GOLDEN = golden_path("genericssl")
C = rg.NUM_CLASSES
STUBBED = ("cv2", "h5py", "albumentations", "batchgenerators", "batchgenerators.transforms",
           "batchgenerators.transforms.abstract_transforms", "batchgenerators.transforms.utility_transforms",
           "batchgenerators.transforms.noise_transforms", "batchgenerators.transforms.color_transforms",
           "batchgenerators.augmentations", "batchgenerators.augmentations.utils", "torch.utils.tensorboard")


# ----------------------------------------------------------------------------- loading the release
def _stub(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)

    def getattr_(attr):  # any name imported from a stub is an empty class
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (), {})

    mod.__getattr__ = getattr_
    return mod


def setup(repo: Path) -> Path:
    code = repo / "code"
    sys.path.insert(0, str(code))
    missing = {n.split(".")[0] for n in STUBBED if importlib.util.find_spec(n.split(".")[0]) is None}
    for name in STUBBED:
        if name == "torch.utils.tensorboard" or name.split(".")[0] in missing:
            sys.modules[name] = _stub(name)
    for attr, typ in (("float", float), ("int", int), ("bool", bool)):  # old numpy aliases (resample.py:131)
        if not hasattr(np, attr):
            setattr(np, attr, typ)
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    return code


def import_train(code: Path, argv=()):
    sys.argv = ["train_diffusion.py", "-t", "synapse", "-sl", "labeled_0.2", "-su", "unlabeled_0.2", *argv]
    spec = importlib.util.spec_from_file_location("released_train_diffusion", code / "train_diffusion.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tolist(t) -> list:
    return [float(v) for v in torch.as_tensor(t).reshape(-1)]


def released_net(dv, dropout: bool):
    return dv.DiffVNet(n_channels=1, n_classes=C, n_filters=rg.WIDTH, normalization="batchnorm", has_dropout=dropout)


def no_dropout(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Dropout3d):
            m.p = 0.0


def x_start(label: torch.Tensor) -> torch.Tensor:
    """train_diffusion.py:252-254: scatter the label into a one-hot, 2 x - 1."""
    onehot = torch.zeros((label.shape[0], C) + tuple(label.shape[1:]))
    onehot.scatter_(1, label.unsqueeze(1), 1)
    return onehot * 2 - 1


# ----------------------------------------------------------------------------- pieces
def golden_schedule(dv, respace) -> dict:
    net = released_net(dv, False)
    d, s = net.diffusion, net.sample_diffusion
    idx = list(rg.SCHEDULE_IDX)
    t = torch.tensor(idx)
    shape = (len(idx), 1)
    tables = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
              "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod")
    gd = sys.modules[type(d).__mro__[1].__module__]
    return {
        "num_timesteps": d.num_timesteps, "idx": idx,
        "train": {k: [float(getattr(d, k)[i]) for i in idx] for k in tables},
        "train_checksum": {k: rd.checksum(torch.from_numpy(getattr(d, k))) for k in tables},
        "q_coeffs": {k: tolist(gd._extract_into_tensor(getattr(d, k), t, shape)[:, 0])
                     for k in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod")},
        "sample": {"timestep_map": list(s.timestep_map), **{k: tolist(torch.from_numpy(getattr(s, k))) for k in tables}},
        "space_timesteps": {f"{n},{k}": sorted(respace.space_timesteps(n, [k])) for n, k in ((1000, 10), (1000, 7), (1000, 1), (100, 3), (50, 4))},
    }


def golden_embedding(dv) -> dict:
    t = torch.tensor([0, 1, 17, 803, 999])
    return {"t": tolist(t), "emb": rd.checksum(dv.get_timestep_embedding(t, 128))}


def golden_q_sample(dv) -> dict:
    net = released_net(dv, False)
    b = rd.step_batch(0)
    return {"x_t": rd.checksum(net.diffusion.q_sample(x_start(b["label_l"]), rg.timesteps(), noise=rg.q_noise()))}


def golden_forward(dv) -> dict:
    b = rd.step_batch(0)
    x_t = released_net(dv, False).diffusion.q_sample(x_start(b["label_l"]), rg.timesteps(), noise=rg.q_noise())
    out = {}
    for mode in ("eval", "train"):
        net = released_net(dv, True)
        rg.fill_released(net, seed=1)
        net.train(mode == "train")
        torch.manual_seed(7)
        with torch.no_grad():
            xi = net(x=x_t, step=rg.timesteps(), image=b["image_l"], pred_type="D_xi_l")
            psi = net(image=b["image_l"], pred_type="D_psi_l")
            theta = net(image=b["image_u"], pred_type="D_theta_u")
        out[mode] = {"xi": rd.checksum(xi), "psi": rd.checksum(psi), "theta": rd.checksum(theta),
                     "state": rg.state_checksum(net, rg.suite_name)}
    return out


def golden_ddim(dv) -> dict:
    b = rd.step_batch(0)
    net = released_net(dv, True)
    rg.fill_released(net, seed=1)
    net.eval()
    with torch.no_grad():
        out = net.sample_diffusion.ddim_sample_loop(net.denoise_model, (rg.N_U, C) + rg.PATCH, noise=rg.sample_start(),
                                                    model_kwargs={"image": b["image_u"]})
    return {"pred_xstart": rd.checksum(out["pred_xstart"]), "steps": [rd.checksum(x) for x in out["all_samples"]]}


def golden_smoothing(utils) -> dict:
    sm = utils.GaussianSmoothing(C, 3, 1)
    x = torch.softmax(rg.sample_start(), 1)
    return {"kernel": tolist(sm.weight[0, 0]), "out": rd.checksum(sm(x))}


def gumbel_is_softmax_plus_noise() -> bool:
    """F.gumbel_softmax(p, dim=1) == softmax(p + g), g = -log(Exp(1)) drawn the same way (one seed)."""
    p = rg.sample_start()
    torch.manual_seed(3)
    a = F.gumbel_softmax(p, dim=1)
    torch.manual_seed(3)
    g = -torch.empty_like(p).exponential_().log()
    return bool(torch.allclose(a, torch.softmax(p + g, 1), rtol=0, atol=1e-6))


def golden_difficulty(mod) -> list:
    diff = mod.Difficulty(C, accumulate_iters=50)  # train_diffusion.py:212
    out = []
    for b in rd.weighting_batches():
        w = diff.cal_weights(b["logits_l"], b["label_l"].unsqueeze(1))
        out.append({"weights": tolist(w), "last_dice": tolist(diff.last_dice), "learn": tolist(diff.cls_learn),
                    "unlearn": tolist(diff.cls_unlearn), "dice_weight": tolist(diff.dice_weight)})
    return out


def golden_losses(mod) -> dict:
    inp = rd.loss_inputs()
    n, label = rd.N_L, inp["label_l"].unsqueeze(1)
    out = {}

    def run(name, fn):
        a = inp["out_A"].clone().requires_grad_(True)
        v = fn(a[:n])
        v.backward()
        out[name] = {"value": float(v.detach()), "grad": rd.checksum(a.grad)}

    run("plain", lambda a: mod.make_loss_function(mod.args.sup_loss)(a, label))  # deno_loss / unsup_loss (:214-216)

    def weighted(a):  # sup_loss after update_weight (:215, :262-263)
        f = mod.make_loss_function(mod.args.sup_loss)
        f.update_weight(inp["w_A"])
        return f(a, label)

    run("weighted", weighted)
    return out


def ema_theta(model, ema_w: float) -> None:
    """train_diffusion.py:235-240 in effect: D_theta <- w D_theta + (1 - w)(D_xi + D_psi) / 2."""
    for name, p in model.decoder_theta.named_parameters():
        if name in model.denoise_model.decoder.state_dict().keys():
            xi = model.denoise_model.decoder.state_dict()[name]
            psi = model.decoder_psi.state_dict()[name]
            if p.shape == xi.shape:
                p.data = ema_w * p.data + (1 - ema_w) * (xi.data + psi.data) / 2.0


def golden_aggregate(dv) -> dict:
    net = released_net(dv, False)
    rg.fill_released(net, seed=5)
    ema_theta(net, rg.EMA_W)
    return rg.state_checksum(net, rg.suite_name, prefix="dec_theta.")


def step_argv() -> list[str]:
    return ["--base_lr", str(rg.LR), "-w", str(rg.MU), "-ep", "10", "-cr", "0"]


def golden_step(code: Path, utils, respace) -> dict:
    """One iteration in float64 with a 3-step sampler (see the module docstring for the fed
    draws): with train-mode BatchNorm over 2 images and a 1-voxel bottleneck each pass of the
    DDIM chain amplifies last-bit differences 10-1000x, so two correct implementations part
    within the release's 10 steps even in float64 (``STEP_SAMPLING_STEPS``).
    Adaptations for float64 only: the float32 time embedding (diff_vnet.py:22) and the float32
    Gaussian kernel are cast to float64, the class weights to float64 for CE (same values)."""
    mod = import_train(code, step_argv())
    mod.config.n_filters = rg.WIDTH
    model, optimizer = mod.make_model_all()  # DiffVNet(has_dropout=True) + SGD (:104-121)
    rg.fill_released(model, seed=11)
    no_dropout(model)
    model.double().train()
    dvm = sys.modules["DiffVNet.diff_vnet"]
    # the sampler as DiffVNet.__init__ builds it, with STEP_SAMPLING_STEPS instead of 10 (see there)
    model.sample_diffusion = respace.SpacedDiffusion(
        use_timesteps=respace.space_timesteps(model.time_steps, [rg.STEP_SAMPLING_STEPS]),
        betas=dvm.get_named_beta_schedule("linear", model.time_steps, use_scale=True), model_mean_type=dvm.ModelMeanType.START_X,
        model_var_type=dvm.ModelVarType.FIXED_LARGE, loss_type=dvm.LossType.MSE)
    embed = dvm.get_timestep_embedding
    dvm.get_timestep_embedding = lambda t, dim: embed(t, dim).double()
    diff = mod.Difficulty(C, accumulate_iters=50)
    deno_loss, sup_loss, unsup_loss = (mod.make_loss_function(mod.args.sup_loss), mod.make_loss_function(mod.args.sup_loss),
                                       mod.make_loss_function(mod.args.unsup_loss))
    mu = mod.get_current_mu(0)
    b = {k: (v.double() if v.is_floating_point() else v) for k, v in rd.step_batch(0).items()}
    rec = {"mu": mu}
    # :233-240
    ema_theta(model, mod.args.ema_w)
    rec["theta_after_ema"] = rg.state_checksum(model, rg.suite_name, prefix="dec_theta.")
    optimizer.zero_grad()
    image_l, label_l, image_u = b["image_l"], b["label_l"].unsqueeze(1).long(), b["image_u"]
    # :250-266 (pred_type="q_sample" = diffusion.q_sample at sampled t with drawn noise)
    t = rg.timesteps()
    x_t = model.diffusion.q_sample(x_start(b["label_l"]).double(), t, noise=rg.q_noise().double())
    p_l_xi = model(x=x_t, step=t, image=image_l, pred_type="D_xi_l")
    p_l_psi = model(image=image_l, pred_type="D_psi_l")
    L_deno = deno_loss(p_l_xi, label_l)
    weight_diff = diff.cal_weights(p_l_xi.detach(), label_l)
    sup_loss.update_weight(weight_diff.double())
    L_diff = sup_loss(p_l_psi, label_l)
    with torch.no_grad():  # :267-273 (ddim_sample with x_T given; gumbel_softmax as softmax(p + g))
        p_u_xi = model.sample_diffusion.ddim_sample_loop(model.denoise_model, (image_u.shape[0], C) + image_u.shape[2:],
                                                         noise=rg.sample_start().double(), model_kwargs={"image": image_u})["pred_xstart"]
        p_u_psi = model(image_u, pred_type="D_psi_l")
        smoothing = utils.GaussianSmoothing(C, 3, 1)
        smoothing.weight = smoothing.weight.double()
        p_u_xi = smoothing(torch.softmax(p_u_xi + rg.gumbel().double(), dim=1))
        p_u_psi = F.softmax(p_u_psi, dim=1)
        pseudo_label = torch.argmax(p_u_xi + p_u_psi, dim=1, keepdim=True)
    p_u_theta = model(image=image_u, pred_type="D_theta_u")
    L_u = unsup_loss(p_u_theta, pseudo_label.detach())
    loss = L_deno + L_diff + mu * L_u
    loss.backward()
    dvm.get_timestep_embedding = embed
    rec.update(loss=float(loss.detach()), deno=float(L_deno.detach()), diff=float(L_diff.detach()), unsup=float(L_u.detach()),
               weights=tolist(weight_diff), p_u_xi=rd.checksum(p_u_xi),
               pseudo_label_hist=tolist(torch.bincount(pseudo_label.reshape(-1), minlength=C)),
               grads={k: rg.grads_checksum(model.named_parameters(), rg.suite_name, prefix=k)
                      for k in ("", "stem.", "stem_xi.", "time_mlp.", "encoder.", "dec_xi.", "dec_psi.", "dec_theta.")})
    optimizer.step()
    rec["delta"] = rg.delta_checksum(model, 11, rg.suite_name)
    rec["state"] = rg.state_checksum(model, rg.suite_name)
    rec["optimizer"] = {k: optimizer.defaults[k] for k in ("lr", "momentum", "weight_decay", "nesterov", "dampening")}
    return rec


MAX_EPOCH, BASE_LR = 10, 0.01


def golden_schedules(code: Path, utils) -> dict:
    mod = import_train(code, ["-w", str(rg.MU), "-ep", str(MAX_EPOCH)])
    epochs = list(range(MAX_EPOCH + 3))
    mus = [mod.get_current_mu(e) for e in epochs]
    mod = import_train(code, ["-w", str(rg.MU), "-ep", str(MAX_EPOCH)])  # get_current_mu sets args.rampup_epoch once
    in_force = []
    mu, lr = mod.get_current_mu(0), BASE_LR  # :222 / the optimiser's lr
    for e in range(MAX_EPOCH + 1):  # :226, :305-307
        in_force.append({"epoch": e, "lr": lr, "mu": mu})
        lr = utils.poly_lr(e, MAX_EPOCH, BASE_LR, 0.9)
        mu = mod.get_current_mu(e)
    return {"max_epoch": MAX_EPOCH, "base_lr": BASE_LR, "mu": rg.MU, "epochs": epochs, "get_current_mu": mus, "in_force": in_force}


# ----------------------------------------------------------------------------- main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", required=True, type=Path, help="checkout of xmed-lab/GenericSSL")
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(ROOT)}")
    a = ap.parse_args(argv)
    command = "python docs/scripts/released/genericssl_goldens.py --repo <GenericSSL checkout>" + (" --write" if a.write else "")
    repo = a.repo.resolve()
    commit = repo_commit(repo)
    saved_argv = sys.argv
    code = setup(repo)
    torch.set_num_threads(1)
    import DiffVNet.diff_vnet as dv
    import DiffVNet.guided_diffusion.respace as respace
    import utils

    mod = import_train(code, step_argv())
    golden = {
        **provenance("xmed-lab/GenericSSL", commit, command),
        "released_keys": sorted(released_net(dv, True).state_dict()),
        "schedule": golden_schedule(dv, respace),
        "embedding": golden_embedding(dv),
        "q_sample": golden_q_sample(dv),
        "forward": golden_forward(dv),
        "ddim": golden_ddim(dv),
        "smoothing": golden_smoothing(utils),
        "gumbel_softmax_is_softmax_plus_noise": gumbel_is_softmax_plus_noise(),
        "difficulty": golden_difficulty(mod),
        "losses": golden_losses(mod),
        "aggregate": golden_aggregate(dv),
        "step": golden_step(code, utils, respace),
        "schedules": golden_schedules(code, utils),
    }
    sys.argv = saved_argv
    write_golden("genericssl", golden, write=a.write, preview=2000)


if __name__ == "__main__":
    main()
