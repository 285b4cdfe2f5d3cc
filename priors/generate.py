"""Write a new prompt set by asking an OpenAI-compatible chat API TAK's two questions per organ.

Honours ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` (local servers such as vLLM or Ollama work).
Asks for JSON, validates it, retries with exponential backoff on 429 / 5xx / connection errors
and on malformed answers, saves progress after every organ to ``<out>.partial.json`` and
resumes from it, and never overwrites an existing prompt set without ``force``. The file
records the model, the date and the questions.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from bench.core.errors import UserError
from bench.core.redact import printable, redact
from bench.core.store import atomic_write_text
from priors.prompts import FORMAT, PromptSet

QUESTIONS = {
    "location": "Describe the relative positional relationship of {organ} with other organs.",
    "shape": "Describe shape and structure of {organ}.",
}
SYSTEM = (
    "You are an expert in abdominal CT anatomy. Answer in plain, factual anatomical language, "
    "1 to 3 sentences per answer, as a JSON object with exactly the keys {keys}."
)


def _labels(spec: str) -> tuple[str, ...]:
    from bench.core.labels import LABEL_SETS

    if spec.lower() in LABEL_SETS:
        return LABEL_SETS[spec.lower()]
    if spec.endswith(".json"):
        from bench.core.labels import read_labels_json

        return read_labels_json(spec)
    raise UserError(f"--labels {spec}: give synapse, amos or a dataset.json path")


class _Retryable(Exception):
    pass


#: the longest answer kept per question (a description is a few sentences; more is a broken server)
MAX_ANSWER_CHARS = 4000


def public_url(url: str) -> str:
    """A URL fit to store: without the user name and password it may carry (``http://user:secret@host``
    -> ``http://host``), its other credentials masked (:func:`bench.core.redact.redact`)."""
    import re

    return redact(re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", url))


def masked(text: str, limit: int = 200) -> str:
    """Server text fit to print: one line, cut to ``limit``, anything key-like masked."""
    from bench.core.redact import safe_text

    return safe_text(text, limit, long_tokens=True)


def _ask(client, model: str, organ: str, temperature: float) -> dict[str, str]:
    import openai

    keys = list(QUESTIONS)
    user = " ".join(f"({i + 1}) {q.format(organ=organ)}" for i, q in enumerate(QUESTIONS.values()))
    user += f" Reply with a JSON object {{{', '.join(repr(k) + ': ...' for k in keys)}}}."
    try:
        resp = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": SYSTEM.format(keys=", ".join(keys))}, {"role": "user", "content": user}],
            response_format={"type": "json_object"},
            temperature=temperature,
        )
    except openai.AuthenticationError as e:
        raise UserError(f"the API refused the key ({e.status_code}); check OPENAI_API_KEY")
    except openai.NotFoundError:
        raise UserError(f"the API does not know model '{model}' or the URL is wrong; check --model and OPENAI_BASE_URL")
    except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError, openai.APITimeoutError) as e:
        raise _Retryable(f"{type(e).__name__}: {masked(e)}")
    except openai.APIStatusError as e:
        if e.status_code >= 500 or e.status_code == 429:
            raise _Retryable(f"HTTP {e.status_code}")
        raise UserError(f"the API answered HTTP {e.status_code} for '{organ}': {masked(e.message)}")
    try:
        text = resp.choices[0].message.content or ""
        data = json.loads(text[text.find("{") : text.rfind("}") + 1])
        if not all(isinstance(data.get(k), str) for k in keys):
            raise ValueError(f"each of {', '.join(keys)} must be a text")
        out = {k: printable(data[k]).strip() for k in keys}  # no escape sequence or control character is stored
        if not all(out.values()):
            raise ValueError("empty answer")
        if any(len(v) > MAX_ANSWER_CHARS for v in out.values()):
            raise ValueError(f"an answer longer than {MAX_ANSWER_CHARS} characters")
        return out
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise _Retryable(f"malformed answer ({type(e).__name__}: {masked(e)})")


def generate_prompt_set(
    labels: str,
    model: str,
    out: str | Path,
    force: bool = False,
    name: str | None = None,
    max_retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    temperature: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = True,
) -> PromptSet:
    """Ask an OpenAI-compatible API TAK's two questions per organ of ``labels`` and write a prompt-set
    JSON to ``out`` (answers validated, retried with backoff, resumed from ``<out>.partial.json``).

    Raises:
        UserError: no API key, an unknown label set, ``out`` exists without ``force``, the API refuses
            the key or the model, or an organ fails ``max_retries + 1`` times.
    """
    out = Path(out)
    if max_retries < 0:
        raise UserError(f"--max-retries {max_retries}: give 0 or more retries")
    if out.exists() and not force:
        raise UserError(f"{out} exists; choose another --out or pass --force to overwrite it")
    if not os.environ.get("OPENAI_API_KEY"):
        raise UserError("OPENAI_API_KEY is not set; export it (any non-empty value for a local server) and set OPENAI_BASE_URL for non-OpenAI servers")
    import openai

    classes: Sequence[str] = _labels(labels)
    client = openai.OpenAI(max_retries=0, timeout=timeout)
    partial = out.with_name(out.name + ".partial.json")
    done: dict[str, dict[str, str]] = {}
    if partial.exists():
        try:
            state = json.loads(partial.read_text())
            if state.get("model") == model and state.get("labels") == list(classes):
                done = state["classes"]
        except (json.JSONDecodeError, KeyError):
            done = {}
    todo = [c for c in classes if c not in done]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"asking {model}", unit="organ", initial=len(done), total=len(classes), leave=False)
    try:
        for organ in todo:
            last = ""
            for attempt in range(max_retries + 1):
                try:
                    done[organ] = _ask(client, model, organ, temperature)
                    break
                except _Retryable as e:
                    last = str(e)
                    if attempt < max_retries:
                        sleep(backoff * 2**attempt)
            else:
                base = public_url(os.environ.get("OPENAI_BASE_URL", "the OpenAI API"))
                kept = f"; the {len(done)} organs done are kept in {partial}, run again to resume" if done else "; nothing was written"
                raise UserError(f"{base} failed {max_retries + 1} times for '{organ}' (last: {last}){kept}")
            atomic_write_text(partial, json.dumps({"model": model, "labels": list(classes), "classes": done}, indent=1))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    ps = PromptSet.from_dict(
        {
            "format": FORMAT,
            "name": name or out.stem,
            "label_sets": [labels if not labels.endswith(".json") else Path(labels).name],
            "views": list(QUESTIONS),
            "meta": {"model": model, "date": dt.date.today().isoformat(), "questions": QUESTIONS,
                     "base_url": public_url(os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"))},
            "classes": done,
        },
        str(out),
    )
    atomic_write_text(out, json.dumps(ps.to_dict(), indent=1) + "\n")
    partial.unlink(missing_ok=True)
    return ps
