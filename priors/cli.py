"""``python -m bench priors list | show | encode | generate``."""

from __future__ import annotations

import time

from bench.core.errors import UserError
from bench.core.redact import printable


def add_parser(sub) -> None:
    """The ``priors`` subcommands (list, show, encode, generate) on the CLI's subparsers."""
    p = sub.add_parser("priors", help="prompt sets and text encoders")
    ps = p.add_subparsers(dest="priors_command")
    ps.add_parser("list", help="registered prompt sets and text encoders")
    s = ps.add_parser("show", help="descriptions and the class cosine-similarity matrix")
    s.add_argument("name")
    s.add_argument("--text-encoder", default="minilm")
    s.add_argument("--labels", default="amos", help="synapse | amos | dataset.json")
    e = ps.add_parser("encode", help="fill the embedding cache ahead of a GPU job")
    e.add_argument("--prompts", default="anatomy")
    e.add_argument("--text-encoder", default="minilm")
    e.add_argument("--labels", default="amos")
    e.add_argument("--device", default="cpu")
    g = ps.add_parser("generate", help="write a prompt set with an OpenAI-compatible chat API")
    g.add_argument("--labels", required=True, help="synapse | amos | dataset.json")
    g.add_argument("--model", default="gpt-4o")
    g.add_argument("--out", required=True)
    g.add_argument("--name", default=None)
    g.add_argument("--force", action="store_true")
    g.add_argument("--max-retries", type=int, default=5)


def _labels(spec: str):
    from priors.generate import _labels as labels

    return labels(spec)


def cosine_matrix(emb, n_classes: int):
    """Mean over views of the class-by-class cosine similarity; emb (V * C, dim) -> (C, C)."""
    import torch

    v = emb.reshape(-1, n_classes, emb.shape[-1])
    v = torch.nn.functional.normalize(v, dim=-1)
    return (v @ v.transpose(1, 2)).mean(0)


def run(args) -> int:
    """Run one ``priors`` subcommand; returns the exit status."""
    from bench.core.registry import ENCODERS, PROMPTS

    cmd = args.priors_command
    if cmd in (None, "list"):
        print("prompt sets:")
        for n in PROMPTS.names():
            ps = PROMPTS.get(n)()
            print(f"  {n:16s} views={','.join(ps.views)}  classes={len(ps.classes) or 'template'}")
        print("text encoders:")
        for n in ENCODERS.names():
            print(f"  {n:16s} {(ENCODERS.get(n).__doc__ or '').strip().splitlines()[0]}")
        return 0
    from priors.cache import prior_embeddings
    from priors.encoders import get_encoder
    from priors.prompts import load_prompt_set

    if cmd == "show":
        import pandas as pd

        from bench.core.labels import abbreviation

        ps = load_prompt_set(args.name)
        classes = _labels(args.labels)
        texts = ps.texts_for(classes)
        for ci, cls in enumerate(classes):
            print(f"{printable(cls)}:")
            for vi, view in enumerate(ps.views):  # texts may come from a server or a file: no escape sequence reaches the terminal
                print(f"  [{printable(view)}] {printable(' / '.join(texts[vi][ci]))}")
        emb = prior_embeddings(ps, args.text_encoder, classes)
        sim = cosine_matrix(emb, len(classes)).numpy()
        names = [abbreviation(c) for c in classes]
        print(f"\ncosine similarity between classes ({args.text_encoder}, mean over views):")
        print(pd.DataFrame(sim, index=names, columns=names).round(2).to_string())
        for a, b in (("right kidney", "left kidney"), ("right adrenal gland", "left adrenal gland"), ("right kidney", "aorta")):
            if a in classes and b in classes:
                print(f"  {a} ~ {b}: {sim[classes.index(a), classes.index(b)]:.3f}")
        return 0
    if cmd == "encode":
        ps = load_prompt_set(args.prompts)
        classes = _labels(args.labels)
        t0 = time.perf_counter()
        enc = get_encoder(args.text_encoder, device=args.device)
        t_load = time.perf_counter() - t0
        emb = prior_embeddings(ps, enc, classes, use_cache=False)
        t_enc = time.perf_counter() - t0 - t_load
        emb = prior_embeddings(ps, enc, classes)  # stores it
        from priors.cache import cached_path

        where = "(precomputed file, nothing to cache)" if enc.precomputed else str(cached_path(ps, enc, classes))
        print(f"{ps.name} x {enc.encoder_id}: {tuple(emb.shape)} for {len(classes)} classes; "
              f"load {t_load:.2f} s, encode {t_enc:.2f} s -> {where}")
        return 0
    if cmd == "generate":
        from priors.generate import generate_prompt_set

        ps = generate_prompt_set(args.labels, args.model, args.out, force=args.force, name=args.name, max_retries=args.max_retries)
        print(f"wrote prompt set '{ps.name}' ({len(ps.classes)} classes, views {', '.join(ps.views)}) to {args.out}")
        return 0
    raise UserError(f"unknown priors command '{cmd}'")
