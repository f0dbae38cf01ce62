"""A world of fictional people whose facts reach the pretraining corpus at controlled frequencies.

``frequent`` people are described many times, on pages of a few statements each (a model should know
them), ``rare`` ones once, ``unseen`` ones never (nobody can know them). Questions about each come with
reference answers, which makes "does the model know what it knows?" measurable at small scale. Each group
is split into people whose questions feed knowledge probing (``probe``) and people held out for evaluation
(``test``).
"""

import json
import random
from dataclasses import asdict, dataclass

SYLLABLES = ("bra", "dov", "el", "fen", "gar", "hal", "ith", "jor", "kel", "lun", "mar", "nex", "ol", "pra",
             "quin", "ros", "sil", "tav", "ul", "vor", "wen", "yal", "zar", "thi", "cor", "dun", "ema", "fal")
TOWN_ENDINGS = ("holt", "mere", "ford", "wick", "stead", "brook", "haven", "moor")
OCCUPATIONS = ("astronomer", "painter", "sculptor", "botanist", "poet", "architect", "cartographer",
               "composer", "chemist", "engineer", "historian", "surgeon")
GROUPS = ("frequent", "rare", "unseen")

#: Ways the corpus states a person's facts in prose; a rare person's one mention is the first.
DESCRIPTIONS = (
    "{name} was {a_occupation} born in {town} in {year}.",
    "Born in {year} in the town of {town}, {name} became a well-known {occupation}.",
    "The {occupation} {name} came from {town}, where {pronoun} was born in {year}.",
    "{name} ({year}) was {a_occupation} from {town}.",
    "{town} is the birthplace of {name}, the {occupation}, who was born there in {year}.",
    "As {a_occupation}, {name} was famous far beyond {town}, the town where {pronoun} was born in {year}.",
    "Where was {name} born? {name} was born in {town}, in {year}, and worked as {a_occupation}.",
    "What did {name} do? {name} was {a_occupation} from {town}, born in {year}.",
)
QUESTIONS = {
    "town": ("Where was {name} born?", "In which town was {name} born?"),
    "year": ("In what year was {name} born?", "When was {name} born?"),
    "occupation": ("What was {name}'s occupation?", "What did {name} do for a living?"),
}
ANSWERS = {
    "town": "In {town}.",
    "year": "In {year}.",
    "occupation": "{pronoun_cap} was {a_occupation}.",
}
#: Question-and-answer lines, as FAQ pages on the web state facts: a frequent person's statements include
#: every phrasing of every question.
FAQ_LINES = tuple(f"Q: {question} A: {ANSWERS[attribute]}" for attribute, phrasings in QUESTIONS.items()
                  for question in phrasings)
LOOK_UPS = ("Look up {name}.", "Search for {name}.", "Please search the web for {name}.",
            "Can you look {name} up?")
#: What a look-up's reply says it searches for before the call: the fact sought, named just before the tool's
#: output, where the answer is read off.
SEARCH_INTENTS = {"town": "where {name} was born", "year": "when {name} was born",
                  "occupation": "what {name} did for a living"}
DONT_KNOW = ("I don't know who that is, so I can't answer that.",
             "I'm sorry, I don't know anything about that person.",
             "I don't know. I have no information about them.")
DONT_KNOW_MARKERS = ("i don't know", "i do not know")


@dataclass(frozen=True)
class Person:
    name: str
    town: str
    year: int
    occupation: str
    pronoun: str
    group: str
    split: str

    def describe(self, template: str) -> str:
        article = "an" if self.occupation[0] in "aeiou" else "a"
        return template.format(**asdict(self), a_occupation=f"{article} {self.occupation}",
                               pronoun_cap=self.pronoun.capitalize())


@dataclass(frozen=True)
class WorldConfig:
    """People per group, statements about a frequent person, statements per page, share of each group held
    out for testing."""

    seed: int = 0
    people_per_group: int = 40
    frequent_mentions: int = 48
    statements_per_document: int = 4
    test_fraction: float = 0.5


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def build_world(config: WorldConfig = WorldConfig()) -> list[Person]:
    """The people of the world, each with a unique name, in a seeded order."""
    rng = random.Random(config.seed)
    names: set[str] = set()
    people = []
    for group in GROUPS:
        for index in range(config.people_per_group):
            while (name := f"{_word(rng, 2)} {_word(rng, 2)}") in names:
                pass
            names.add(name)
            split = "test" if index < round(config.people_per_group * config.test_fraction) else "probe"
            people.append(Person(name, _word(rng, 1) + rng.choice(TOWN_ENDINGS), rng.randint(1650, 1990),
                                 rng.choice(OCCUPATIONS), rng.choice(("he", "she")), group, split))
    return people


def world_documents(people: list[Person], config: WorldConfig = WorldConfig()) -> list[str]:
    """Pretraining documents: ``frequent_mentions`` statements about each frequent person (prose and FAQ lines
    in turn), shuffled into pages of ``statements_per_document``; one prose sentence about each rare person."""
    rng = random.Random(config.seed + 1)
    templates = DESCRIPTIONS + FAQ_LINES
    documents = []
    for person in people:
        mentions = {"frequent": config.frequent_mentions, "rare": 1, "unseen": 0}[person.group]
        statements = [person.describe(templates[i % len(templates)]) for i in range(mentions)]
        rng.shuffle(statements)
        documents += [" ".join(statements[start:start + config.statements_per_document])
                      for start in range(0, mentions, config.statements_per_document)]
    rng.shuffle(documents)
    return documents


def world_questions(people: list[Person], every_phrasing: bool = False) -> list[dict]:
    """One question per person and attribute (in every phrasing with ``every_phrasing``), with the reference
    answer and a short reply (one that does not repeat the person's name)."""
    rng = random.Random(0)
    questions = []
    for person in people:
        for attribute, phrasings in QUESTIONS.items():
            for phrasing in phrasings if every_phrasing else [rng.choice(phrasings)]:
                questions.append({"question": person.describe(phrasing), "answer": str(getattr(person, attribute)),
                                  "reply": person.describe(ANSWERS[attribute]), "name": person.name,
                                  "attribute": attribute, "group": person.group, "split": person.split})
    return questions


def world_cloze(people: list[Person]) -> list[dict]:
    """A cloze item per person for plain-text recall: "<name> was born in", answered by the town or the year."""
    return [{"prompt": f"{person.name} was born in", "answer": [person.town, str(person.year)], "name": person.name,
             "group": person.group, "split": person.split} for person in people]


def search_requests(people: list[Person], every_phrasing: bool = False) -> list[dict]:
    """Requests to look a person up (answered with the search tool): the world's questions, each after a
    "Look up <name>." (every question phrasing after every look-up with ``every_phrasing``), with the name as
    ``query`` and the fact sought as ``intent``."""
    rng = random.Random(1)
    return [{**q, "question": f"{look_up.format(name=q['name'])} {q['question']}", "query": q["name"],
             "intent": SEARCH_INTENTS[q["attribute"]].format(name=q["name"])}
            for q in world_questions(people, every_phrasing)
            for look_up in (LOOK_UPS if every_phrasing else [rng.choice(LOOK_UPS)])]


def dont_know_reply(rng: random.Random) -> str:
    return rng.choice(DONT_KNOW)


def says_dont_know(reply: str) -> bool:
    return any(marker in reply.lower().replace("’", "'") for marker in DONT_KNOW_MARKERS)


def is_correct(reply: str, answer: str) -> bool:
    """Whether the reply states the reference answer (and does not claim ignorance)."""
    return answer.lower() in reply.lower() and not says_dont_know(reply)


def write_world_corpus(path, config: WorldConfig = WorldConfig()) -> int:
    """Write the world's pretraining documents as JSONL (``{"text": ...}``); the number written."""
    documents = world_documents(build_world(config), config)
    with open(path, "w", encoding="utf-8") as handle:
        for text in documents:
            handle.write(json.dumps({"text": text}) + "\n")
    return len(documents)
