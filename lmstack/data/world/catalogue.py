"""A synthetic bilingual catalogue of films and books, and users who consume them in time order.

``build_catalogue(CatalogueConfig(), seed)`` invents items (an English and a Chinese title, a genre, a kind,
a few hidden "taste" coordinates and a popularity) and users (a hobby from the world's hobby list and a
hidden taste vector). Each user's history is drawn item by item, without repeats, from a softmax over

    genre_weight * [item's genre is one the user's hobby leads to]
  + taste_weight * <user taste, item taste>
  + popularity_weight * item popularity
  + sequel_weight * [item has the genre of the previous item]

so histories follow the user's hobby, a few latent tastes, the crowd, and a short-term genre streak.
The descriptions name an item's genre and its strongest tastes in words ("a dark, funny comedy film"),
so a language model that reads the catalogue can relate items by text. ``split`` is the usual
leave-last-out, time-ordered next-item split: the last item of each history is the test target.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from lmstack.data.world_text import HOBBIES

# (English, Chinese) genre names; each hobby leads to the genres listed in HOBBY_GENRES.
GENRES: list[tuple[str, str]] = [
    ("comedy", "喜剧"), ("mystery", "悬疑"), ("romance", "爱情"), ("science fiction", "科幻"),
    ("history", "历史"), ("sports", "体育"), ("nature", "自然"), ("music", "音乐"),
    ("cooking", "美食"), ("adventure", "冒险"), ("poetry", "诗歌"), ("strategy", "策略"),
]
# hobby index (lmstack.data.world_text.HOBBIES order) -> genre indices it favours
HOBBY_GENRES: dict[str, tuple[int, ...]] = {
    "playing chess": (11, 1), "swimming": (5, 6), "hiking": (6, 9), "fishing": (6, 0),
    "playing the violin": (7, 2), "gardening": (6, 8), "cooking": (8, 0), "dancing": (7, 2),
    "running": (5, 9), "knitting": (4, 2), "birdwatching": (6, 3), "playing the piano": (7, 10),
    "cycling": (5, 9), "singing": (7, 0), "reading poetry": (10, 4), "taking photographs": (6, 9),
    "writing calligraphy": (10, 4), "flying kites": (9, 0),
}
KINDS: list[tuple[str, str]] = [("film", "电影"), ("book", "书")]
# Each latent taste axis: (positive word, negative word), English then Chinese.
TASTE_WORDS: list[tuple[tuple[str, str], tuple[str, str]]] = [
    (("funny", "幽默"), ("serious", "严肃")), (("dark", "黑暗"), ("bright", "明快")),
    (("fast-paced", "快节奏"), ("slow", "舒缓")), (("epic", "宏大"), ("intimate", "细腻")),
    (("strange", "奇特"), ("familiar", "亲切")), (("hopeful", "温暖"), ("sad", "伤感")),
]
TITLE_ADJECTIVES: list[tuple[str, str]] = [
    ("Silent", "沉默的"), ("Golden", "金色的"), ("Lost", "迷失的"), ("Last", "最后的"), ("Hidden", "隐藏的"),
    ("Broken", "破碎的"), ("Distant", "遥远的"), ("Red", "红色的"), ("Winter", "冬天的"), ("Little", "小小的"),
    ("Wild", "野性的"), ("Secret", "秘密的"), ("Burning", "燃烧的"), ("Quiet", "安静的"), ("Northern", "北方的"),
    ("Paper", "纸做的"), ("Iron", "铁的"), ("Blue", "蓝色的"), ("Sleeping", "沉睡的"), ("Endless", "无尽的"),
]
TITLE_NOUNS: list[tuple[str, str]] = [
    ("River", "河"), ("Garden", "花园"), ("Mountain", "山"), ("Kingdom", "王国"), ("Letter", "信"),
    ("Harbour", "港湾"), ("Lantern", "灯笼"), ("Forest", "森林"), ("Island", "岛"), ("Bridge", "桥"),
    ("Kitchen", "厨房"), ("Orchestra", "乐团"), ("Voyage", "航行"), ("Tower", "塔"), ("Moon", "月亮"),
    ("Horse", "马"), ("Summer", "夏天"), ("Road", "路"), ("Clock", "钟"), ("Song", "歌"),
]


@dataclass
class CatalogueConfig:
    """Sizes and the weights of the users' choice model (see the module docstring)."""

    n_items: int = 120
    n_users: int = 600
    min_history: int = 8
    max_history: int = 20
    n_tastes: int = 4               # latent taste axes (<= len(TASTE_WORDS))
    genre_weight: float = 2.0
    taste_weight: float = 1.0
    popularity_weight: float = 0.7
    sequel_weight: float = 1.5

    def __post_init__(self):
        if not 2 <= self.n_items <= len(TITLE_ADJECTIVES) * len(TITLE_NOUNS):
            raise ValueError(f"catalogue.n_items={self.n_items}: must be 2..{len(TITLE_ADJECTIVES) * len(TITLE_NOUNS)}")
        if not 1 <= self.n_tastes <= len(TASTE_WORDS):
            raise ValueError(f"catalogue.n_tastes={self.n_tastes}: must be 1..{len(TASTE_WORDS)}")
        if not 2 <= self.min_history <= self.max_history < self.n_items:
            raise ValueError(f"catalogue: need 2 <= min_history ({self.min_history}) <= max_history "
                             f"({self.max_history}) < n_items ({self.n_items})")
        if self.n_users < 1:
            raise ValueError(f"catalogue.n_users={self.n_users} must be >= 1")


@dataclass
class Item:
    id: int
    title: dict[str, str]           # {"en": ..., "zh": ...}
    genre: int                      # index into GENRES
    kind: int                       # index into KINDS
    taste: list[float]
    popularity: float

    def description(self, lang: str = "en") -> str:
        """One sentence naming the item's genre, kind and its two strongest tastes."""
        strongest = sorted(range(len(self.taste)), key=lambda k: -abs(self.taste[k]))[:2]
        li = 0 if lang == "en" else 1
        words = [TASTE_WORDS[k][0 if self.taste[k] > 0 else 1][li] for k in strongest]
        genre, kind = GENRES[self.genre][li], KINDS[self.kind][li]
        if lang == "en":
            article = "an" if words[0][0] in "aeiou" else "a"
            return f"{self.title['en']} is {article} {words[0]}, {words[1]} {genre} {kind}."
        return f"《{self.title['zh']}》是一部{words[0]}、{words[1]}的{genre}{kind}。"


@dataclass
class User:
    id: int
    hobby: str
    taste: list[float]
    history: list[int] = field(default_factory=list)   # item ids, oldest first


@dataclass
class Catalogue:
    config: CatalogueConfig
    seed: int
    items: list[Item]
    users: list[User]

    def split(self) -> tuple[list[list[int]], list[int]]:
        """Leave-last-out: (each user's training history, each user's held-out last item)."""
        return [u.history[:-1] for u in self.users], [u.history[-1] for u in self.users]

    def documents(self, rng: random.Random, shelves_per_genre: int = 3) -> list[str]:
        """Catalogue texts for pretraining: each item's description in both languages, and "shelf" lists of
        same-genre titles (what a shop or library page shows). No user data is in them."""
        docs = [it.description(lang) for it in self.items for lang in ("en", "zh")]
        for g, (genre_en, genre_zh) in enumerate(GENRES):
            members = [it for it in self.items if it.genre == g]
            for _ in range(shelves_per_genre if len(members) > 1 else 0):
                shelf = rng.sample(members, min(len(members), 6))
                docs.append(f"More {genre_en}: " + "; ".join(it.title["en"] for it in shelf) + ".")
                docs.append(f"更多{genre_zh}：" + "；".join(f"《{it.title['zh']}》" for it in shelf) + "。")
        rng.shuffle(docs)
        return docs


def _make_items(cfg: CatalogueConfig, rng: random.Random) -> list[Item]:
    titles = rng.sample([(a, n) for a in range(len(TITLE_ADJECTIVES)) for n in range(len(TITLE_NOUNS))], cfg.n_items)
    items = []
    for i, (a, n) in enumerate(titles):
        title = {"en": f"The {TITLE_ADJECTIVES[a][0]} {TITLE_NOUNS[n][0]}", "zh": TITLE_ADJECTIVES[a][1] + TITLE_NOUNS[n][1]}
        items.append(Item(id=i, title=title, genre=rng.randrange(len(GENRES)), kind=rng.randrange(len(KINDS)),
                          taste=[round(rng.gauss(0, 1), 4) for _ in range(cfg.n_tastes)],
                          popularity=round(rng.gauss(0, 1), 4)))
    return items


def _draw_history(cfg: CatalogueConfig, user: User, items: list[Item], rng: random.Random) -> list[int]:
    liked_genres = set(HOBBY_GENRES[user.hobby])
    base = [cfg.genre_weight * (it.genre in liked_genres)
            + cfg.taste_weight * sum(a * b for a, b in zip(user.taste, it.taste)) / math.sqrt(cfg.n_tastes)
            + cfg.popularity_weight * it.popularity for it in items]
    seen: set[int] = set()
    history: list[int] = []
    for _ in range(rng.randint(cfg.min_history, cfg.max_history)):
        last_genre = items[history[-1]].genre if history else -1
        candidates = [i for i in range(len(items)) if i not in seen]
        logits = [base[i] + cfg.sequel_weight * (items[i].genre == last_genre) for i in candidates]
        top = max(logits)
        weights = [math.exp(x - top) for x in logits]
        choice = rng.choices(candidates, weights=weights)[0]
        history.append(choice)
        seen.add(choice)
    return history


def build_catalogue(cfg: CatalogueConfig | None = None, seed: int = 0) -> Catalogue:
    """Deterministic given (cfg, seed)."""
    cfg = cfg or CatalogueConfig()
    rng = random.Random(f"catalogue:{seed}")
    items = _make_items(cfg, rng)
    hobbies = [h for h, _ in HOBBIES if h in HOBBY_GENRES]
    users = []
    for u in range(cfg.n_users):
        user = User(id=u, hobby=rng.choice(hobbies), taste=[round(rng.gauss(0, 1), 4) for _ in range(cfg.n_tastes)])
        user.history = _draw_history(cfg, user, items, rng)
        users.append(user)
    return Catalogue(config=cfg, seed=seed, items=items, users=users)
