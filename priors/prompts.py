"""Prompt sets: per-class text descriptions in named views, stored as JSON data files.

File format (``"format": "bench-prompts/1"``)::

    {
      "format": "bench-prompts/1",
      "name": "anatomy",
      "label_sets": ["btcv", "amos"],          # what it is written for (informative)
      "views": ["location", "shape"],           # TAK uses two views
      "classes": {"liver": {"location": "...", "shape": "..."}, ...},
      "template": "A computerized tomography of a {organ}",   # optional: fills absent classes
      "meta": {...}                             # model, date, questions, author
    }

A view's value is a string or a list of strings (their embeddings are averaged). Class keys are
organ names; matching to a dataset's classes goes through :func:`bench.core.labels.canonical_organ`
(``IVC`` = ``inferior vena cava`` = ``postcava``). A class with no description is an error
naming it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bench.core.errors import UserError
from bench.core.labels import canonical_organ
from bench.core.registry import register_prompts

FORMAT = "bench-prompts/1"
PROMPT_DIR = Path(__file__).parent / "prompts"


@dataclass
class PromptSet:
    """Texts per organ and view (e.g. location, shape) that become a method's text priors."""
    name: str
    views: tuple[str, ...]
    classes: dict[str, dict[str, list[str]]]  # canonical organ -> view -> texts
    template: str | None = None
    label_sets: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)
    source: str = ""

    # -- parsing --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: object, source: str = "<dict>") -> "PromptSet":
        where = f"prompt file {source}"
        if not isinstance(data, dict):
            raise UserError(f"{where}: must hold a JSON object")
        if data.get("format") != FORMAT:
            raise UserError(f"{where}: field 'format' must be '{FORMAT}' (got {data.get('format')!r})")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise UserError(f"{where}: field 'name' must be a non-empty string")
        views = data.get("views")
        if not isinstance(views, list) or not views or not all(isinstance(v, str) and v for v in views):
            raise UserError(f"{where}: field 'views' must be a non-empty list of view names")
        template = data.get("template")
        if template is not None and (not isinstance(template, str) or "{organ}" not in template):
            raise UserError(f"{where}: field 'template' must be a string containing '{{organ}}'")
        if template is not None:
            import string

            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            except ValueError as e:
                raise UserError(f"{where}: field 'template' is not a valid text template ({e}); write literal braces as {{{{ }}}}")
            if fields != ["organ"] * len(fields):
                raise UserError(f"{where}: field 'template' may hold only the placeholder {{organ}} (found "
                                f"{', '.join('{' + f + '}' for f in fields if f != 'organ')}); write other braces as {{{{ }}}}")
        raw = data.get("classes", {})
        if not isinstance(raw, dict):
            raise UserError(f"{where}: field 'classes' must map organ names to views")
        classes: dict[str, dict[str, list[str]]] = {}
        for organ, per_view in raw.items():
            if not isinstance(per_view, dict):
                raise UserError(f"{where}: class '{organ}' must map each view to a description")
            entry = {}
            for view in views:
                text = per_view.get(view)
                texts = [text] if isinstance(text, str) else text
                if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                    raise UserError(f"{where}: class '{organ}' has no text for view '{view}' (a non-empty string or list of strings)")
                entry[view] = [t.strip() for t in texts]
            extra = set(per_view) - set(views)
            if extra:
                raise UserError(f"{where}: class '{organ}' has view(s) {sorted(extra)} not listed in 'views'")
            key = canonical_organ(organ)
            if key in classes:
                raise UserError(f"{where}: class '{organ}' is described twice (aliases of '{key}')")
            classes[key] = entry
        if not classes and template is None:
            raise UserError(f"{where}: no classes and no template")
        meta = data.get("meta", {})
        return cls(
            name=name,
            views=tuple(views),
            classes=classes,
            template=template,
            label_sets=tuple(data.get("label_sets", ())),
            meta=meta if isinstance(meta, dict) else {},
            source=source,
        )

    @classmethod
    def load(cls, path: str | Path) -> "PromptSet":
        from bench.core.store import read_json

        p = Path(path)
        return cls.from_dict(read_json(p, f"prompt file {p}"), str(p))

    def to_dict(self) -> dict:
        out = {"format": FORMAT, "name": self.name, "label_sets": list(self.label_sets), "views": list(self.views),
               "meta": self.meta, "classes": {k: {v: t if len(t) > 1 else t[0] for v, t in d.items()} for k, d in self.classes.items()}}
        if self.template:
            out["template"] = self.template
        return out

    # -- use --------------------------------------------------------------------------------
    def texts_for(self, class_names: Sequence[str]) -> list[list[list[str]]]:
        """texts[view][class] = list of descriptions, in the order of ``class_names``."""
        out: list[list[list[str]]] = [[] for _ in self.views]
        for name in class_names:
            key = canonical_organ(name)
            if key in self.classes:
                for i, view in enumerate(self.views):
                    out[i].append(self.classes[key][view])
            elif self.template is not None:
                for i in range(len(self.views)):
                    out[i].append([self.template.format(organ=name)])
            else:
                raise UserError(f"prompt set '{self.name}' has no description of class '{name}'; add it to {self.source or 'the prompt file'}")
        return out

    def subset(self, name: str, views: Sequence[str]) -> "PromptSet":
        missing = [v for v in views if v not in self.views]
        if missing:
            raise UserError(f"prompt set '{self.name}' has no view(s) {missing}")
        return PromptSet(name, tuple(views), {k: {v: d[v] for v in views} for k, d in self.classes.items()},
                         self.template, self.label_sets, {**self.meta, "derived_from": self.name}, self.source)

    def digest(self) -> str:
        """Hash of the content that reaches the encoder (texts, views, template)."""
        body = json.dumps({"views": self.views, "classes": self.classes, "template": self.template}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


def load_prompt_set(name_or_path: str) -> PromptSet:
    """A registered prompt set by name, or a prompt file by path."""
    from bench.core.registry import PROMPTS

    if name_or_path.endswith(".json") or "/" in name_or_path:
        return PromptSet.load(name_or_path)
    return PROMPTS.get(name_or_path)()


@register_prompts("names")
def names() -> PromptSet:
    """Universal-Model template: 'A computerized tomography of a {organ}' (one view)."""
    return PromptSet.load(PROMPT_DIR / "names.json")


@register_prompts("anatomy")
def anatomy() -> PromptSet:
    """Location and shape descriptions per organ (BTCV-13 + AMOS-15), TAK's two views."""
    return PromptSet.load(PROMPT_DIR / "anatomy.json")


@register_prompts("location_only")
def location_only() -> PromptSet:
    """Ablation: the 'location' view of `anatomy` alone."""
    return anatomy().subset("location_only", ["location"])


@register_prompts("shape_only")
def shape_only() -> PromptSet:
    """Ablation: the 'shape' view of `anatomy` alone."""
    return anatomy().subset("shape_only", ["shape"])
