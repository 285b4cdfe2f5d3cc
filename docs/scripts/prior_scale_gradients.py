"""TAK's text-driven head at initialisation with the prior at two scales (docs/fidelity.md, "Prior scale").

For the minilm ``anatomy`` prior of the 14 phantom classes at its own scale (unit rows) and scaled
to the released tensor's mean row norm: the spread of the logits across voxels and the gradient
norms of the controller and of the shared text projection after one cross-entropy backward on a
random 2x1x32x32x64 input with random labels (width 8), for torch seeds 0, 1, 2:

    python docs/scripts/prior_scale_gradients.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.core.labels import BTCV_13
from methods.tak import RELEASED_PRIOR_NORM, TAKNetwork, scale_prior
from priors.cache import prior_embeddings


def main() -> None:
    names = BTCV_13  # background included (index 0)
    prior = prior_embeddings("anatomy", "minilm", names)
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32, 64)
    y = torch.randint(0, len(names), (2, 32, 32, 64))
    print("| prior mean row norm | torch seed | logit std across voxels | controller grad norm | text_to_hidden grad norm |")
    print("|---|---|---|---|---|")
    for norm in (0.0, RELEASED_PRIOR_NORM):
        p = scale_prior(prior, norm)
        for seed in range(3):
            torch.manual_seed(seed)
            net = TAKNetwork(len(names), 8, 16, 16, p, False, "default")
            feats = net.encode(x)
            logits = net.head(feats[2:5], net.decode(feats))
            F.cross_entropy(logits, y).backward()
            head = net.head
            print(f"| {p.norm(dim=1).mean():.3f} | {seed} | {logits.std(dim=(2, 3, 4)).mean():.5f} | "
                  f"{head.controller.weight.grad.norm():.2e} | {head.text_to_hidden[0].weight.grad.norm():.2e} |")


if __name__ == "__main__":
    main()
