"""The synthetic world as a knowledge graph of (subject, relation, object) triples, with a small query API.

Entities have ids (``p003`` a person, ``c01`` a city, ``france`` a country, ``occupation:carpenter``,
``hobby:singing``, ``capital:paris``) and English and Chinese names (relations ``name_en`` / ``name_zh``).
Relations between entities: ``birthplace`` (person -> city), ``occupation`` and ``hobby`` (person -> value
entity), ``country`` (city -> country), ``capital`` (country -> capital); ``birth_year`` is a literal.

``KnowledgeGraph.query`` answers conjunctive queries (basic graph patterns, the core of SPARQL): a list of
(s, p, o) patterns whose terms starting with ``?`` are variables, e.g.::

    kg.query([("?p", "occupation", "occupation:carpenter"), ("?p", "hobby", "hobby:singing"),
              ("?p", "birthplace", "?c"), ("?c", "country", "?k")])

Only the public entity tables of ``lmstack.data.world`` (people, cities, countries) are read.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from lmstack.runs import atomic_write_json, read_json

KG_FORMAT = "lmstack-kg/1"
ENTITY_RELATIONS = ("birthplace", "occupation", "hobby", "country", "capital")
LITERAL_RELATIONS = ("type", "name_en", "name_zh", "birth_year")
RELATIONS = LITERAL_RELATIONS + ENTITY_RELATIONS

Triple = tuple[str, str, str]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _norm(name: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", name).lower().removeprefix("the ").split())


class KnowledgeGraph:
    def __init__(self, triples: Iterable[Triple] = (), meta: dict | None = None):
        self.triples: list[Triple] = []
        self._seen: set[Triple] = set()
        self._by_sp: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._by_po: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._by_p: dict[str, list[Triple]] = defaultdict(list)
        self._by_name: dict[str, list[str]] = defaultdict(list)
        self.meta = meta or {}  # entity id -> {"group": ...}: bookkeeping, not facts
        for t in triples:
            self.add(*t)

    def add(self, s: str, p: str, o: str) -> None:
        if p not in RELATIONS:
            raise ValueError(f"triple ({s}, {p}, {o}): relation {p!r} is not one of {', '.join(RELATIONS)}")
        t = (str(s), p, str(o))
        if t in self._seen:
            return
        self._seen.add(t)
        self.triples.append(t)
        self._by_sp[(t[0], p)].append(t[2])
        self._by_po[(p, t[2])].append(t[0])
        self._by_p[p].append(t)
        if p in ("name_en", "name_zh"):
            self._by_name[_norm(t[2])].append(t[0])

    def __len__(self) -> int:
        return len(self.triples)

    # ------------------------------------------------------------------ lookups
    def objects(self, subject: str, relation: str) -> list[str]:
        return list(self._by_sp.get((subject, relation), []))

    def subjects(self, relation: str, obj: str) -> list[str]:
        return list(self._by_po.get((relation, obj), []))

    def name(self, entity: str, lang: str = "en") -> str:
        names = self.objects(entity, "name_zh" if lang == "zh" else "name_en")
        return names[0] if names else entity

    def resolve(self, name: str) -> list[str]:
        """Entity ids whose English (case-insensitive, leading "the" ignored) or Chinese name is ``name``,
        or ``[name]`` itself when it is an entity id."""
        if (name, "type") in self._by_sp:
            return [name]
        return list(dict.fromkeys(self._by_name.get(_norm(name), [])))

    def entities_of_type(self, kind: str) -> list[str]:
        return self.subjects("type", kind)

    # ------------------------------------------------------------------ conjunctive queries
    def _candidates(self, pattern: Triple, binding: dict) -> list[Triple]:
        s, p, o = (binding.get(x, x) for x in pattern)
        var = lambda x: x.startswith("?")  # noqa: E731
        if var(p):
            pool = [t for ts in self._by_p.values() for t in ts]
        elif not var(s) and not var(o):
            return [(s, p, o)] if (s, p, o) in self._seen else []
        elif not var(s):
            return [(s, p, x) for x in self._by_sp.get((s, p), [])]
        elif not var(o):
            return [(x, p, o) for x in self._by_po.get((p, o), [])]
        else:
            pool = self._by_p.get(p, [])
        return [t for t in pool if all(var(q) or q == v for q, v in zip((s, p, o), t))]

    def query(self, patterns: Sequence[Triple]) -> list[dict[str, str]]:
        """All variable bindings satisfying every pattern (a backtracking join; the most selective pattern
        is matched first at each depth). Sorted for determinism."""
        for pat in patterns:
            if len(pat) != 3:
                raise ValueError(f"query pattern {pat!r}: expected (subject, relation, object)")
            if not pat[1].startswith("?") and pat[1] not in RELATIONS:
                raise ValueError(f"query pattern {pat!r}: unknown relation {pat[1]!r}; known: {', '.join(RELATIONS)}")
        results: list[dict[str, str]] = []

        def solve(remaining: list[Triple], binding: dict) -> None:
            if not remaining:
                results.append(dict(binding))
                return
            options = [(len(self._candidates(p, binding)), i) for i, p in enumerate(remaining)]
            _, best = min(options)
            pattern = remaining[best]
            rest = remaining[:best] + remaining[best + 1:]
            for triple in self._candidates(pattern, binding):
                new = dict(binding)
                ok = True
                for term, value in zip(pattern, triple):
                    if term.startswith("?"):
                        if new.setdefault(term, value) != value:
                            ok = False
                if ok:
                    solve(rest, new)

        solve(list(patterns), {})
        unique = {json.dumps(r, sort_keys=True): r for r in results}
        return [unique[k] for k in sorted(unique)]

    # ------------------------------------------------------------------ persistence and interop
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_json(path, {"format": KG_FORMAT, "triples": [list(t) for t in self.triples], "meta": self.meta})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "KnowledgeGraph":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no knowledge graph (build one with `lmstack kg build --run RUN`)")
        data = read_json(path)
        if data.get("format") != KG_FORMAT:
            raise ValueError(f"{path}: format {data.get('format')!r}, this lmstack reads {KG_FORMAT!r}")
        return cls((tuple(t) for t in data["triples"]), data.get("meta", {}))

    def to_rdflib(self, namespace: str = "http://lmstack.local/"):
        """The same triples as an ``rdflib.Graph``: entity ids become IRIs, literals stay literals."""
        import rdflib

        ns = rdflib.Namespace(namespace)
        g = rdflib.Graph()
        for s, p, o in self.triples:
            obj = ns[o] if p in ENTITY_RELATIONS else rdflib.Literal(o)
            g.add((ns[s], ns[p], obj))
        return g


def world_triples(world) -> tuple[list[Triple], dict]:
    """Triples of a ``lmstack.data.world.World`` (people, cities, countries and their facts)."""
    out: list[Triple] = []

    def entity(eid: str, kind: str, en: str, zh: str) -> None:
        out.extend([(eid, "type", kind), (eid, "name_en", en), (eid, "name_zh", zh)])

    for k in world.countries:
        entity(k.id, "country", k.name_en, k.name_zh)
        cap = f"capital:{_slug(k.capital_en)}"
        entity(cap, "capital", k.capital_en, k.capital_zh)
        out.append((k.id, "capital", cap))
    for c in world.cities:
        entity(c.id, "city", c.name_en, c.name_zh)
        out.append((c.id, "country", c.country))
    meta = {}
    for p in world.people:
        entity(p.id, "person", p.name_en, p.name_zh)
        occ, hob = f"occupation:{_slug(p.occupation_en)}", f"hobby:{_slug(p.hobby_en)}"
        entity(occ, "occupation", p.occupation_en, p.occupation_zh)
        entity(hob, "hobby", p.hobby_en, p.hobby_zh)
        out += [(p.id, "birth_year", str(p.birth_year)), (p.id, "birthplace", p.birthplace),
                (p.id, "occupation", occ), (p.id, "hobby", hob)]
        meta[p.id] = {"group": p.group}
    return out, meta


def kg_from_world(world) -> KnowledgeGraph:
    triples, meta = world_triples(world)
    return KnowledgeGraph(triples, meta)


def kg_from_world_json(path: str | Path) -> KnowledgeGraph:
    """The graph from a run's ``data/world/world.json`` entity tables (no need to regenerate the world)."""
    from types import SimpleNamespace

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (the data stage writes the world; run it first)")
    data = read_json(path)
    try:
        world = SimpleNamespace(**{key: [SimpleNamespace(**row) for row in data[key]]
                                   for key in ("countries", "cities", "people")})
        return kg_from_world(world)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: entity tables not in the expected form ({e!r})") from None
