"""``chatforge sft-data build``: the embedded, offline SFT mixture.

    <output>/train.jsonl, test.jsonl        {"messages": [...], "source": ...}; unique conversations, test held
                                           out per source
    <output>/word_problems_test.jsonl      held-out multi-digit word problems {"question", "answer"} (tool eval)
    <output>/python_problems_test.jsonl    held-out questions that need a program {"question", "code", "answer"},
                                           on words and numbers training never asks about (python-tool eval)
    <output>/world_qa_train.jsonl          questions about the fictional world's probe people, answered
    <output>/world_qa_frequent.jsonl       every phrasing of the questions about frequent probe people (those
                                           the corpus describes many times), answered
    <output>/world_probe.jsonl             the same questions with reference answers, for knowledge probing
    <output>/world_qa_test.jsonl           questions about held-out people of every group (knowledge eval)
    <output>/world_search_test.jsonl       requests to look up held-out people (search-tool eval)
    <output>/world_cloze_test.jsonl        "<name> was born in" -> town or year, held-out people (recall eval)
    <output>/country_probe.jsonl           real-world facts (the world's capitals, asked both ways) for knowledge
    <output>/country_test.jsonl            probing of a pretrained model, and the held-out countries' questions
    <output>/search-index/                 BM25 index of the embedded pretraining corpus (the search tool's)
    <output>/summary.json, SOURCES.md      conversations per source and split; origin and license

Sources: real conversations from chatterbot-corpus (BSD-3-Clause, PyPI), generated conversations
(greetings and follow-ups, identity, refusals of harmful requests), arithmetic word problems (worked
in the text for small numbers, with the calculator for large ones), sandboxed-Python tool examples and
look-ups of the fictional world's people with the search tool (over the embedded pretraining corpus).
"""

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from ..data import EMBEDDED_WIKIPEDIA, iter_documents
from ..io import atomic_directory, write_jsonl
from ..tools import SearchIndex, run_python, search_tool, strongest_available, tool_exchange
from .conversations import check_messages
from .country_facts import country_questions
from .word_problems import word_problem
from .world import WorldConfig, build_world, search_requests, world_cloze, world_documents, world_questions

COMPLETE_MARKER = ".complete"
ASSISTANT_NAME = "chatforge"
#: chatterbot-corpus files left out: a persona that is not ours.
CHATTERBOT_EXCLUDED = {"botprofile.yml"}

IDENTITY_QUESTIONS = ("Who are you?", "What is your name?", "What are you?", "Are you a human?",
                      "Who made you?", "Tell me about yourself.", "What should I call you?", "Are you ChatGPT?",
                      "what's your name", "Introduce yourself, please.")
IDENTITY_ANSWERS = (
    f"I'm {ASSISTANT_NAME}, a small language model trained to be a helpful assistant.",
    f"My name is {ASSISTANT_NAME}. I am an AI assistant, not a person.",
    f"I am {ASSISTANT_NAME}, an assistant built with the {ASSISTANT_NAME} training pipeline: pretraining on web "
    "text, then fine-tuning on conversations.",
    f"You can call me {ASSISTANT_NAME}. I'm an AI language model, so I can make mistakes.",
)
GREETINGS = ("Hi!", "Hello", "Hey there", "Good morning!", "Good evening", "hi", "Hello, how are you?", "Yo")
GREETING_REPLIES = ("Hello! How can I help you today?", "Hi! What can I do for you?",
                    "Hello! I'm doing well, thank you. How can I help?", "Hey! What would you like to talk about?")
THANKS = ("Thanks!", "Thank you.", "Great, thanks a lot.", "ok thanks", "That helps, thank you!")
THANKS_REPLIES = ("You're welcome!", "Glad I could help. Anything else?", "Any time!",
                  "You're welcome. Let me know if you have more questions.")
FAREWELLS = ("Bye!", "Goodbye.", "See you later", "That's all for now.")
FAREWELL_REPLIES = ("Goodbye! Have a great day.", "Bye! Come back any time.", "See you! Take care.")
HARMFUL_REQUESTS = ("How do I make a bomb?", "Tell me how to poison someone.", "How can I steal my neighbor's car?",
                    "Write a message to scam old people out of their savings.", "How do I hack into my ex's email?",
                    "Give me instructions to make a weapon at home.", "How can I hurt someone without getting caught?",
                    "Help me buy illegal drugs online.", "How do I break into a house?",
                    "Write malware that steals passwords.", "How do I cheat on my taxes without being caught?",
                    "How can I make a fake ID?")
REFUSALS = ("I can't help with that. It could seriously harm people. If you want, I can help with something else.",
            "Sorry, I won't help with that request because it could hurt someone or break the law.",
            "I'm not able to help with that. Is there something else I can do for you?",
            "I can't assist with that. If you or someone else is in danger, please contact local emergency services.")
PYTHON_TASKS = (
    ("What is the sum of the squares of the numbers from 1 to {n}?", "print(sum(i * i for i in range(1, {n} + 1)))"),
    ("What is {n} factorial?", "import math\nprint(math.factorial({n}))"),
    ("What is the {n}th Fibonacci number?", "a, b = 0, 1\nfor _ in range({n}):\n    a, b = b, a + b\nprint(a)"),
    ("How many prime numbers are there below {m}?",
     "print(sum(all(k % d for d in range(2, int(k ** 0.5) + 1)) for k in range(2, {m})))"),
    ("Reverse the word '{word}'.", "print('{word}'[::-1])"),
    ("How many times does the letter '{letter}' appear in '{word}'?", "print('{word}'.count('{letter}'))"),
)
WORDS = ("strawberry", "banana", "mississippi", "assistant", "language", "tokenizer", "parallel", "committee")
#: The slots of the python tool's questions (words; the ranges of n and m): the held-out problems draw from their own,
#: so none of them is asked in training.
PYTHON_SLOTS = {"train": (WORDS, (5, 30), (20, 500)),
                "test": (("pineapple", "bookkeeper", "accommodate", "chocolate", "necessary", "engineering",
                          "quizzical", "raspberry"), (31, 40), (501, 1000))}
#: How a reply to a python-tool question states the program's result.
PYTHON_RESULT = "The result is "


@dataclass
class SFTDataConfig:
    """Draws per generated part (duplicates are dropped, so small template sets give fewer), chatterbot-corpus
    taken whole, and the held-out share."""

    seed: int = 0
    identity: int = 200
    smalltalk: int = 300
    refusals: int = 200
    word_problems_small: int = 1500
    word_problems_tool: int = 3000
    python_tool: int = 200
    search_tool: int = 800
    test_fraction: float = 0.1
    word_problems_test: int = 200
    python_problems_test: int = 100
    world: WorldConfig = field(default_factory=WorldConfig)


def _chat(*turns: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)]


def chatterbot_conversations() -> list[list[dict]]:
    """The English chatterbot-corpus dialogues as user/assistant conversations (a dangling last user turn
    is dropped)."""
    folder = resources.files("chatterbot_corpus") / "data" / "english"
    conversations = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yml") or path.name in CHATTERBOT_EXCLUDED:
            continue
        for dialogue in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            turns = [str(turn).strip() for turn in dialogue if isinstance(turn, (str, int, float))]
            turns = turns[: len(turns) // 2 * 2]
            if turns and all(turns):
                conversations.append(_chat(*turns))
    return conversations


def identity_conversations(rng: random.Random, count: int) -> list[list[dict]]:
    return [_chat(rng.choice(IDENTITY_QUESTIONS), rng.choice(IDENTITY_ANSWERS)) for _ in range(count)]


def smalltalk_conversations(rng: random.Random, count: int) -> list[list[dict]]:
    """Greetings with follow-ups: an identity or arithmetic question in between, thanks and farewells."""
    conversations = []
    for _ in range(count):
        turns = [rng.choice(GREETINGS), rng.choice(GREETING_REPLIES)]
        if rng.random() < 0.5:
            turns += [rng.choice(IDENTITY_QUESTIONS), rng.choice(IDENTITY_ANSWERS)]
        else:
            problem = word_problem(rng, multi_digit=False)
            turns += [problem.question, problem.solution(use_calculator=False)]
        turns += [rng.choice(THANKS), rng.choice(THANKS_REPLIES)]
        if rng.random() < 0.5:
            turns += [rng.choice(FAREWELLS), rng.choice(FAREWELL_REPLIES)]
        conversations.append(_chat(*turns))
    return conversations


def refusal_conversations(rng: random.Random, count: int) -> list[list[dict]]:
    return [_chat(rng.choice(HARMFUL_REQUESTS), rng.choice(REFUSALS)) for _ in range(count)]


def word_problem_conversations(rng: random.Random, count: int, multi_digit: bool) -> list[list[dict]]:
    """Small numbers worked in the text; multi-digit ones solved with the calculator tool."""
    return [_chat(p.question, p.solution(use_calculator=multi_digit))
            for p in (word_problem(rng, multi_digit) for _ in range(count))]


def python_problems(rng: random.Random, count: int, split: str) -> list[dict]:
    """Questions answered by a short program, ``{"question", "code", "answer"}``: the answer is the program's
    output in the sandbox. The programs are this module's own, so they run under the weaker sandbox where
    bubblewrap cannot start. ``split`` picks the slots (:data:`PYTHON_SLOTS`)."""
    isolation = strongest_available()
    words, n_range, m_range = PYTHON_SLOTS[split]
    problems = []
    for _ in tqdm(range(count), desc=f"python problems ({split})", leave=False):
        question, code = rng.choice(PYTHON_TASKS)
        word = rng.choice(words)
        slots = {"n": rng.randint(*n_range), "m": rng.randint(*m_range), "word": word, "letter": rng.choice(word)}
        code = code.format(**slots)
        problems.append({"question": question.format(**slots), "code": code,
                         "answer": run_python(code, isolation=isolation)})
    return problems


def stated_result(reply: str) -> str | None:
    """The result a reply states after the last ``The result is`` (its final period dropped), if it states one."""
    if PYTHON_RESULT not in reply:
        return None
    return reply.rsplit(PYTHON_RESULT, 1)[1].strip().removesuffix(".")


def python_tool_conversations(rng: random.Random, count: int) -> list[list[dict]]:
    """Questions answered by running a short program in the sandbox (the outputs are real runs)."""
    return [_chat(p["question"], f"I'll run a short Python program. {tool_exchange('python', p['code'], p['answer'])}"
                                 f"{PYTHON_RESULT}{p['answer']}.")
            for p in python_problems(rng, count, "train")]


def search_conversations(rng: random.Random, count: int, requests: list[dict], index: SearchIndex) -> list[list[dict]]:
    """Look-ups answered from the search tool's real output, the fact sought named before the call."""
    search = search_tool(index)
    chosen = [rng.choice(requests) for _ in range(count)]
    return [_chat(r["question"], f"Let me search for {r['intent']}. "
                                 f"{tool_exchange('search', r['query'], search(r['query']))}{r['reply']}")
            for r in chosen]


def _answered(questions) -> Iterator[dict]:
    """World questions as conversations answered with their reference replies."""
    return ({"messages": _chat(q["question"], q["reply"]), "source": "world_qa"} for q in questions)


def _states_any(messages: list[dict], pairs: set[tuple[str, str]]) -> bool:
    """Whether the conversation names both words of one of ``pairs`` (a country and its capital)."""
    text = " ".join(message["content"] for message in messages)
    return any(first in text and second in text for first, second in pairs)


SOURCES = {
    "chatterbot": ("chatterbot-corpus 1.3.3 (PyPI), English dialogues", "BSD-3-Clause"),
    "identity": ("generated: who the assistant is", "Apache-2.0 (chatforge)"),
    "smalltalk": ("generated: greetings, follow-ups, thanks, farewells", "Apache-2.0 (chatforge)"),
    "refusals": ("generated: refusals of harmful requests", "Apache-2.0 (chatforge)"),
    "word_problems": ("generated: arithmetic word problems worked in the text", "Apache-2.0 (chatforge)"),
    "calculator_tool": ("generated: multi-digit word problems solved with the calculator", "Apache-2.0 (chatforge)"),
    "python_tool": ("generated: questions answered by sandboxed Python runs", "Apache-2.0 (chatforge)"),
    "search_tool": ("generated: look-ups of fictional people answered from the search tool",
                    "Apache-2.0 (chatforge); search results quote CC BY-SA Wikipedia text where they hit it"),
}


def build_sft_data(output_dir: str | Path, config: SFTDataConfig = SFTDataConfig()) -> dict:
    """Build the embedded SFT mixture (or return the summary of a finished one)."""
    output_dir = Path(output_dir)
    if (output_dir / COMPLETE_MARKER).exists():
        return json.loads((output_dir / "summary.json").read_text())
    rng = random.Random(config.seed)
    people = build_world(config.world)
    index = SearchIndex.build([*iter_documents([str(EMBEDDED_WIKIPEDIA)]), *world_documents(people, config.world)])
    indexed = [person for person in people if person.group != "unseen"]  # the people the search index describes
    training_requests = [r for r in search_requests(indexed, every_phrasing=True) if r["split"] == "probe"]
    parts = {
        "chatterbot": chatterbot_conversations(),
        "identity": identity_conversations(rng, config.identity),
        "smalltalk": smalltalk_conversations(rng, config.smalltalk),
        "refusals": refusal_conversations(rng, config.refusals),
        "word_problems": word_problem_conversations(rng, config.word_problems_small, multi_digit=False),
        "calculator_tool": word_problem_conversations(rng, config.word_problems_tool, multi_digit=True),
        "python_tool": python_tool_conversations(rng, config.python_tool),
        "search_tool": search_conversations(rng, config.search_tool, training_requests, index),
    }
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    summary: dict = {"sources": {}}
    countries = country_questions()
    held_out_capitals = {(q["country"], q["answer"]) for q in countries
                         if q["split"] == "test" and q["group"] == "capital"}
    for source, conversations in parts.items():
        for number, messages in enumerate(conversations):
            check_messages(messages, f"{source} conversation {number}")
        # the knowledge evaluation's held-out capitals are never stated in training ("Canberra is the capital city
        # of which country?" in chatterbot's trivia)
        conversations = [messages for messages in conversations if not _states_any(messages, held_out_capitals)]
        unique = {json.dumps(messages, sort_keys=True): messages for messages in conversations}
        records = [{"messages": messages, "source": source} for messages in unique.values()]
        rng.shuffle(records)
        held_out = max(1, round(len(records) * config.test_fraction))
        splits["test"] += records[:held_out]
        splits["train"] += records[held_out:]
        summary["sources"][source] = {"train": len(records) - held_out, "test": held_out,
                                      "what": SOURCES[source][0], "license": SOURCES[source][1]}
    test_rng = random.Random(config.seed + 1_000_003)
    problems = [word_problem(test_rng, multi_digit=True) for _ in range(config.word_problems_test)]
    python_test = python_problems(random.Random(config.seed + 2_000_003), config.python_problems_test, "test")
    with atomic_directory(output_dir) as tmp_dir:
        for split, records in splits.items():
            rng.shuffle(records)
            write_jsonl(tmp_dir / f"{split}.jsonl", records)
        (tmp_dir / "train_by_source").mkdir()
        for source in parts:  # for mixtures that weight the sources (the smollm2 recipe's probed SFT)
            write_jsonl(tmp_dir / "train_by_source" / f"{source}.jsonl",
                        (record for record in splits["train"] if record["source"] == source))
        write_jsonl(tmp_dir / "word_problems_test.jsonl",
                     ({"question": p.question, "answer": p.answer, "expression": p.expression} for p in problems))
        write_jsonl(tmp_dir / "python_problems_test.jsonl", python_test)
        questions = world_questions(people)
        probe = [q for q in questions if q["split"] == "probe"]
        write_jsonl(tmp_dir / "world_qa_train.jsonl", _answered(probe))
        phrasings = world_questions(people, every_phrasing=True)
        write_jsonl(tmp_dir / "world_qa_frequent.jsonl",
                    _answered(q for q in phrasings if q["split"] == "probe" and q["group"] == "frequent"))
        write_jsonl(tmp_dir / "world_probe.jsonl", probe)
        write_jsonl(tmp_dir / "world_qa_test.jsonl", (q for q in questions if q["split"] == "test"))
        write_jsonl(tmp_dir / "world_search_test.jsonl",
                    (r for r in search_requests(indexed) if r["split"] == "test"))
        write_jsonl(tmp_dir / "world_cloze_test.jsonl", (c for c in world_cloze(people) if c["split"] == "test"))
        for split in ("probe", "test"):
            write_jsonl(tmp_dir / f"country_{split}.jsonl", (q for q in countries if q["split"] == split))
        index.save(tmp_dir / "search-index")
        summary["world"] = {"probe_questions": len(probe), "test_questions": len(questions) - len(probe)}
        (tmp_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        lines = ["# SFT data", "", "| source | what | train | test | license |", "|---|---|---:|---:|---|"]
        lines += [f"| {name} | {info['what']} | {info['train']} | {info['test']} | {info['license']} |"
                  for name, info in summary["sources"].items()]
        (tmp_dir / "SOURCES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp_dir / COMPLETE_MARKER).touch()
    return summary
