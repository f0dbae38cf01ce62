"""Web-like pages whose fate in the pipeline is known by construction, one group per filter.

Good pages are real English Wikipedia paragraphs laid out as articles (with navigation and footer
boilerplate); each bad page is built to fail one step and pass the ones before it. Every record
carries ``expect``: ``"keep"`` or the name of the step that must drop it, and PII pages list the
planted strings that must disappear.
"""

import json
import random
import re
from html import escape
from pathlib import Path

from .. import EMBEDDED_WIKIPEDIA
from ..text_sources import iter_documents

NON_ENGLISH = {
    "fr": [
        "La ville est située sur la rive gauche du fleuve, au pied d'une colline couverte de vignes. "
        "Elle compte aujourd'hui près de douze mille habitants, dont beaucoup travaillent dans les "
        "fermes et les ateliers des environs.",
        "Au Moyen Âge, le bourg était entouré de remparts dont il ne reste que deux tours. L'église, "
        "reconstruite au dix-septième siècle, conserve un clocher roman et de beaux vitraux.",
        "Le marché du samedi attire les visiteurs de toute la région, qui viennent y acheter du "
        "fromage, du miel et les légumes cultivés dans la vallée.",
    ],
    "de": [
        "Die Stadt liegt am linken Ufer des Flusses am Fuß eines Hügels, der mit Weinbergen bedeckt "
        "ist. Sie hat heute fast zwölftausend Einwohner, von denen viele in den umliegenden Höfen "
        "und Werkstätten arbeiten.",
        "Im Mittelalter war der Ort von einer Stadtmauer umgeben, von der nur noch zwei Türme "
        "erhalten sind. Die Kirche wurde im siebzehnten Jahrhundert wieder aufgebaut.",
        "Der Wochenmarkt am Samstag zieht Besucher aus der ganzen Region an, die dort Käse, Honig "
        "und das Gemüse aus dem Tal kaufen.",
    ],
    "es": [
        "La ciudad se encuentra en la orilla izquierda del río, al pie de una colina cubierta de "
        "viñedos. Hoy cuenta con casi doce mil habitantes, muchos de los cuales trabajan en las "
        "granjas y talleres de los alrededores.",
        "En la Edad Media el pueblo estaba rodeado de murallas, de las que solo quedan dos torres. La "
        "iglesia, reconstruida en el siglo diecisiete, conserva un campanario románico.",
        "El mercado del sábado atrae a visitantes de toda la región, que vienen a comprar queso, miel "
        "y las verduras cultivadas en el valle.",
    ],
}

# A keyword-stuffed product page: English words, but none of Gopher's stop words.
KEYWORD_STUFFING = (
    "running shoes mens womens lightweight breathable trainers sale discount leather boots sandals sneakers "
    "hiking waterproof outdoor jacket fleece winter summer cotton shirts denim jeans slim fit stretch black "
    "white navy grey classic vintage modern casual formal office party wedding gift ideas kids toddler baby "
    "socks underwear pajamas hoodie sweatshirt cardigan sweater wool cashmere silk scarf gloves beanie cap "
    "sunglasses wallet belt backpack handbag tote purse luggage travel accessories jewelry necklace bracelet "
    "earrings watch smartwatch fitness tracker headphones speaker charger cable"
).split()

PLANTED_PII = {
    "email": "jane.doe1987@gmail.com",
    "ip": "93.184.216.34",
    "ssn": "123-45-6789",
    "phone": "(415) 555-0172",
}


def article_html(title: str, paragraphs: list[str]) -> str:
    """An article page with the boilerplate real sites have around the content."""
    body = "\n".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    return (
        f"<!DOCTYPE html><html><head><title>{escape(title)}</title>"
        "<script>window.analytics = {track: function() {}};</script></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/about'>About</a> | <a href='/contact'>Contact</a></nav>"
        f"<main><article><h1>{escape(title)}</h1>\n{body}\n</article></main>"
        "<footer><p>Copyright 2024. All rights reserved.</p><a href='/privacy'>Privacy</a></footer>"
        "</body></html>"
    )


def _spam_lines(rng: random.Random, n: int) -> list[str]:
    adjectives = ["cheap", "best", "new", "discount", "top", "free", "hot", "premium", "official", "latest"]
    items = ["shoes", "watches", "bags", "phones", "tablets", "jackets", "glasses", "laptops", "cameras", "rings"]
    places = ["online", "near you", "for sale", "in stock", "today", "with delivery", "this week", "at outlet"]
    lines = set()
    while len(lines) < n:
        lines.add(f"{rng.choice(adjectives)} {rng.choice(items)} and {rng.choice(items)} {rng.choice(places)}")
    return sorted(lines)


def _alpha_share(text: str) -> float:
    """Share of alphabetic tokens when punctuation marks count as tokens of their own."""
    tokens = re.findall(r"\w+|[^\w\s]", text)
    return sum(token.isalpha() for token in tokens) / max(len(tokens), 1)


def build_ground_truth(seed: int = 0) -> list[dict]:
    """Records ``{"id", "url", "html", "expect", "pii"?}``; ``expect`` is ``"keep"`` or a step name."""
    rng = random.Random(seed)
    # Long, word-rich paragraphs: number-heavy ones (tables of results, dates) can fairly fail Gopher.
    paragraphs = [p for p in iter_documents([str(EMBEDDED_WIKIPEDIA)]) if len(p) > 300 and _alpha_share(p) > 0.85]
    rng.shuffle(paragraphs)
    take = iter(paragraphs)
    records = []

    def add(kind: str, expect: str, html: str, url: str | None = None, **extra):
        index = len(records)
        records.append({"id": f"{kind}-{index:03d}", "url": url or f"https://example.org/{kind}/{index}",
                        "html": html, "expect": expect, **extra})

    for i in range(20):
        add("good", "keep", article_html(f"Article {i}", [next(take) for _ in range(4)]))
    pii_paragraphs = [next(take) for _ in range(4)]
    contact = (f"For questions write to {PLANTED_PII['email']} or call {PLANTED_PII['phone']}. The archive "
               f"server at {PLANTED_PII['ip']} keeps old records; applicants were asked for a number such as "
               f"{PLANTED_PII['ssn']} on the form.")
    add("pii", "keep", article_html("Contact", [*pii_paragraphs[:2], contact, *pii_paragraphs[2:]]),
        pii=list(PLANTED_PII.values()))
    original = [next(take) for _ in range(4)]
    add("neardup", "keep", article_html("Original", original))
    edited = [*original]
    words = edited[1].split()
    words[3] = "notably"
    edited[1] = " ".join(words)
    add("neardup", "minhash", article_html("Copy", edited), url="https://mirror.example.net/copy")

    add("blocked", "url_filter", article_html("Gallery", [next(take) for _ in range(4)]),
        url="https://example.net/bangbros-gallery")
    add("app-shell", "extract", "<html><head><title>App</title><script>render(document.body);</script>"
        "</head><body><div id='root'></div></body></html>")
    for lang, texts in NON_ENGLISH.items():
        add(f"lang-{lang}", "language", article_html(lang, texts))
    repeated = next(take)
    add("repetition", "gopher_repetition", article_html("Repeat", [repeated] * 8))
    add("keywords", "gopher_quality", article_html("Shop", [" ".join(KEYWORD_STUFFING)]))
    lorem = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
             "et dolore magna aliqua.")
    add("lorem", "c4", article_html("Placeholder", [next(take), lorem, next(take), next(take)]))
    lines = _spam_lines(rng, 60)
    add("list-spam", "fineweb_quality", "<html><body><main>" +
        "".join(f"<p>{line}</p>" for line in lines) + "</main></body></html>")
    return records


def write_ground_truth(output_dir: str | Path, seed: int = 0, expected_dir: str | Path | None = None) -> int:
    """Write the records as ``pages.jsonl`` (fields ``id``, ``url``, ``html``) and, in ``expected_dir``
    (default: the same folder), ``expected.jsonl`` with each page's expected fate; the number of pages."""
    output_dir = Path(output_dir)
    expected_dir = Path(expected_dir or output_dir)
    for folder in (output_dir, expected_dir):
        folder.mkdir(parents=True, exist_ok=True)
    records = build_ground_truth(seed)
    with open(output_dir / "pages.jsonl", "w", encoding="utf-8") as pages, \
            open(expected_dir / "expected.jsonl", "w", encoding="utf-8") as expected:
        for record in records:
            pages.write(json.dumps({key: record[key] for key in ("id", "url", "html")}) + "\n")
            expected.write(json.dumps({key: value for key, value in record.items() if key != "html"}) + "\n")
    return len(records)
