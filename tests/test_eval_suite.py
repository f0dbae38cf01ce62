import copy
import json
import math

import pytest
import torch
from conftest import learn_texts, memorize, small_config

from chatforge.eval.induction import ordinary_token_ids, repeated_sequence_copying
from chatforge.eval.intervals import wilson_interval
from chatforge.eval.model_identity import model_fingerprint
from chatforge.eval.recall import DISTRACTOR, cloze_recall
from chatforge.eval.suite import EvalData, bits_per_byte, evaluate_model, regurgitation
from chatforge.inference.engine import Engine, SamplingParams
from chatforge.modeling import ChatForgeForCausalLM
from chatforge.tasks.world import build_world, world_cloze
from chatforge.tools import tool_exchange


def _greedy_ids(engine, prompt_ids, tokens):
    return engine.generate_ids([prompt_ids], SamplingParams(temperature=0.0, max_new_tokens=tokens))[0]


def test_bits_per_byte_of_a_batch_is_the_sum_over_its_documents(model, tokenizer, documents):
    texts = documents[:5]
    batched = bits_per_byte(model, tokenizer, texts, max_length=64, batch_size=5)
    nats = n_bytes = tokens = 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=64)["input_ids"]
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
            nats += loss * (len(ids) - 1)
            tokens += len(ids) - 1
            n_bytes += len(tokenizer.decode(ids[1:]).encode("utf-8"))
    assert batched["tokens"] == tokens
    assert batched["loss"] == pytest.approx(nats / tokens, rel=1e-4)
    assert batched["bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-4)


def test_regurgitation_finds_a_memorised_continuation_and_not_a_foreign_one(model, tokenizer, documents):
    engine = Engine(model, tokenizer)
    prompt = tokenizer(documents[0], add_special_tokens=False)["input_ids"][:8]
    memorised = tokenizer.decode(prompt + _greedy_ids(engine, prompt, 8))
    figures = regurgitation(engine, [memorised], prefix_tokens=8, suffix_tokens=8)
    assert figures["max_verbatim_tokens"] == 8 and figures["full_share"] == 1.0
    foreign = regurgitation(engine, documents[1:6], prefix_tokens=8, suffix_tokens=8)
    assert foreign["full_share"] == 0.0 and foreign["mean_verbatim_tokens"] < 2
    assert foreign["documents"] == 5


def test_induction_score_tells_a_model_that_copies_from_its_context_from_one_that_cannot(model, tokenizer):
    untrained = repeated_sequence_copying(model, tokenizer, sequences=64, length=16)
    vocabulary = torch.tensor(ordinary_token_ids(tokenizer))
    assert not set(vocabulary.tolist()) & set(tokenizer.all_special_ids)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(1500):  # random sequences of 4-24 tokens shown twice, loss on the second copy
        sequence = vocabulary[torch.randint(len(vocabulary), (32, int(torch.randint(4, 25, ()))))]
        labels = torch.cat([torch.full_like(sequence, -100), sequence], dim=1)
        model(input_ids=torch.cat([sequence, sequence], dim=1), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    copying = repeated_sequence_copying(model, tokenizer, sequences=64, length=24, seed=1)
    assert untrained["second_copy_accuracy"] < 0.05 and abs(untrained["induction_score"]) < 0.5
    assert copying["second_copy_accuracy"] > 0.6 and copying["induction_score"] > 3
    assert copying["first_copy_accuracy"] < 0.05  # the first copy stays unpredictable


def test_tasks_must_fit_the_model(saved_model_dir, tmp_path):
    data = EvalData(pairs=str(tmp_path / "pairs.jsonl"))
    with pytest.raises(ValueError, match="a language model"):
        evaluate_model(str(saved_model_dir), ["pairs"], data)
    with pytest.raises(ValueError, match="unknown tasks \\['mmlu'\\]"):
        evaluate_model(str(saved_model_dir), ["mmlu"], data)
    with pytest.raises(FileNotFoundError, match="task 'bpb' needs held-out text: not given"):
        evaluate_model(str(saved_model_dir), ["bpb"], data)


def test_a_record_without_a_field_its_task_reads_is_named(saved_model_dir, tmp_path):
    cloze = tmp_path / "cloze.jsonl"
    cloze.write_text(json.dumps({"prompt": "Falol Corpra was born in", "answer": "Dovstead"}) + "\n"
                     + json.dumps({"prompt": "Brazar Corbra was born in"}) + "\n")
    with pytest.raises(ValueError, match=f"{cloze}: record 2 has no answer \\(task 'recall' reads prompt, answer\\)"):
        evaluate_model(str(saved_model_dir), ["recall"], EvalData(cloze=str(cloze)))
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"answer": "Dovstead"}) + "\n")
    with pytest.raises(ValueError, match="record 1 has no question"):
        evaluate_model(str(saved_model_dir), ["knowledge"], EvalData(questions=str(questions)))


def test_eval_command_writes_the_figures(saved_model_dir, tokenizer, tmp_path, documents, capsys):
    from chatforge.cli import main

    val = tmp_path / "val.jsonl"
    long_documents = [text for text in documents if len(text) > 600][:4]  # each over 64 tokens
    val.write_text("".join(json.dumps({"text": text}) + "\n" for text in long_documents))
    main(["eval", str(saved_model_dir), "--tasks", "bpb,regurgitation,induction", "--val-text", str(val),
          "--corpus", str(val), "--limit", "4", "--output", str(tmp_path / "eval.json")])
    figures = json.loads((tmp_path / "eval.json").read_text())
    assert figures["bpb"]["documents"] == 4
    # an untrained model is no better than guessing uniformly, and not much worse (its logits are small)
    assert math.log(len(tokenizer)) < figures["bpb"]["loss"] < math.log(len(tokenizer)) + 1
    assert figures["regurgitation"]["documents"] == 4
    assert figures["induction"]["sequences"] == 4
    assert json.loads(capsys.readouterr().out) == figures


def test_cloze_recall_tells_facts_learnt_at_the_start_of_a_document_from_facts_learnt_after_a_sentence(tokenizer):
    people = build_world()[:8]
    items = [{**item, "group": ("even", "odd")[index % 2]} for index, item in enumerate(world_cloze(people))]
    facts = [f"{item['prompt']} {item['answer'][0]}." for item in items]  # the town
    torch.manual_seed(0)
    untrained = ChatForgeForCausalLM(small_config(tokenizer)).eval()
    at_start, after_sentence = copy.deepcopy(untrained), copy.deepcopy(untrained)
    learn_texts(at_start, tokenizer, facts, steps=150)
    learn_texts(after_sentence, tokenizer, [f"{DISTRACTOR} {fact}" for fact in facts], steps=150)
    figures = {name: cloze_recall(Engine(model, tokenizer), items) for name, model in
               (("untrained", untrained), ("at_start", at_start), ("after_sentence", after_sentence))}
    overall = {name: f["all"] for name, f in figures.items()}
    assert overall["untrained"]["start_accuracy"] == overall["untrained"]["after_sentence_accuracy"] == 0
    assert overall["at_start"]["start_accuracy"] >= 0.75 > overall["at_start"]["after_sentence_accuracy"]
    assert overall["after_sentence"]["after_sentence_accuracy"] >= 0.75 > overall["after_sentence"]["start_accuracy"]
    assert figures["at_start"]["even"]["items"] == figures["at_start"]["odd"]["items"] == 4
    assert overall["at_start"]["items"] == 8
    example = figures["at_start"]["examples"][0]
    assert example["answer"][0] in example["start"] and example["prompt"] == items[0]["prompt"]


def test_wilson_intervals_match_published_values():
    # 81 of 263 (Newcombe 1998, Statistics in Medicine 17:857, table I's example): 0.2553 to 0.3662
    assert [round(bound, 4) for bound in wilson_interval(81, 263)] == [0.2553, 0.3662]
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(10, 10)[1] == 1
    for trials in range(1, 301):  # the observed share inside its interval, exactly, at every count
        for successes in range(trials + 1):
            low, high = wilson_interval(successes, trials)
            assert low <= successes / trials <= high


def test_python_problems_are_right_when_the_reply_states_the_program_output(model, tokenizer, tmp_path):
    from chatforge.cli import main

    question = "What is the sum of the squares of the numbers from 1 to 35?"
    code = "print(sum(i * i for i in range(1, 36)))"
    reply = "I'll run a short Python program. " + tool_exchange("python", code, "14910") + "The result is 14910."
    memorize(model, tokenizer, [[{"role": "user", "content": question}, {"role": "assistant", "content": reply}]])
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    right, wrong = {"question": question, "answer": "14910"}, {"question": question, "answer": "14911"}
    (tmp_path / "problems.jsonl").write_text(json.dumps(right) + "\n" + json.dumps(wrong) + "\n")
    main(["eval", str(tmp_path / "model"), "--tasks", "python_problems", "--python-problems",
          str(tmp_path / "problems.jsonl"), "--output", str(tmp_path / "figures.json")])
    figures = json.loads((tmp_path / "figures.json").read_text())["python_problems"]
    assert figures["with_tools"]["accuracy"] == 0.5 and figures["with_tools"]["tool_calls"] == 2
    assert figures["without_tools"]["tool_calls"] == 0 and figures["without_tools"]["tasks"] == 2


def test_greedy_replies_that_call_no_tool_are_not_generated_again_without_tools(model, tokenizer, monkeypatch):
    from chatforge.eval import chat
    from chatforge.inference.batching import chat_many
    from chatforge.tools import default_toolbox

    calls = {"question": "What is 1234 times 5678?", "answer": "7006652"}
    plain = {"question": "What is 3 plus 4?", "answer": "7"}
    memorize(model, tokenizer, [
        [{"role": "user", "content": calls["question"]}, {"role": "assistant", "content": "Let me compute it. "
         + tool_exchange("calculator", "1234*5678", "7006652") + "The answer is 7006652."}],
        [{"role": "user", "content": plain["question"]}, {"role": "assistant", "content": "The answer is 7."}]])
    engine = Engine(model, tokenizer, toolbox=default_toolbox())
    generated = []
    monkeypatch.setattr(chat, "chat_many", lambda engine, conversations, params, use_tools, desc: (
        generated.append((use_tools, len(conversations))) or chat_many(engine, conversations, params, use_tools)))
    figures = chat.word_problem_accuracy(engine, [calls, plain])
    assert generated == [(True, 2), (False, 1)]  # only the reply that called the calculator is asked again
    assert figures["with_tools"]["accuracy"] == 1 and figures["with_tools"]["tool_calls"] == 1
    # the same figures as asking both without tools
    replies = chat_many(engine, [[{"role": "user", "content": task["question"]}] for task in (calls, plain)],
                        chat.GREEDY, use_tools=False)
    assert not any(event.kind == "tool_call" for events in replies for event in events)
    right = [chat.extract_answer(events[-1].text) == task["answer"] for task, events in zip((calls, plain), replies)]
    assert figures["without_tools"]["accuracy"] == sum(right) / 2 and right[1]
    generated.clear()  # sampled, every reply is drawn again without the tools
    chat.tool_task_accuracy(engine, [calls, plain], lambda reply, task: True, "sampled",
                            SamplingParams(temperature=1.0, max_new_tokens=32, seed=0))
    assert generated == [(True, 2), (False, 2)]


def test_greedy_replies_cut_off_inside_a_call_are_generated_again_without_tools_and_no_others(model, tokenizer,
                                                                                               monkeypatch):
    from chatforge.eval import chat
    from chatforge.inference.batching import chat_many
    from chatforge.tools import default_toolbox

    opening, answer = "Let me compute it. ", "Three plus four is seven, so the answer is 7."
    calls = {"question": "What is 1234 times 5678?", "answer": "7006652"}
    plain = {"question": "What is 3 plus 4?", "answer": "7"}
    memorize(model, tokenizer, [
        [{"role": "user", "content": calls["question"]}, {"role": "assistant", "content": opening
         + tool_exchange("calculator", "1234*5678", "7006652") + "The answer is 7006652."}],
        [{"role": "user", "content": plain["question"]}, {"role": "assistant", "content": answer}]])
    budget = len(tokenizer(opening, add_special_tokens=False)["input_ids"]) + 3  # the call opened, not closed
    assert len(tokenizer(answer, add_special_tokens=False)["input_ids"]) > budget
    params = SamplingParams(temperature=0.0, max_new_tokens=budget)
    engine = Engine(model, tokenizer, toolbox=default_toolbox())
    conversations = [[{"role": "user", "content": task["question"]}] for task in (calls, plain)]
    cut = [list(engine.chat(messages, params))[-1] for messages in conversations]
    assert [(done.finish_reason, done.open_call) for done in cut] == [("length", True), ("length", False)]
    generated, judged = [], []
    monkeypatch.setattr(chat, "chat_many", lambda engine, conversations, params, use_tools, desc: (
        generated.append((use_tools, len(conversations))) or chat_many(engine, conversations, params, use_tools)))
    chat.tool_task_accuracy(engine, [calls, plain], lambda reply, task: judged.append(reply) or True, "cut", params)
    assert generated == [(True, 2), (False, 1)]  # the reply cut off inside its call is asked again, alone
    without = chat_many(engine, conversations, params, use_tools=False)
    assert judged[2:] == [events[-1].text for events in without]  # the same replies as asking both without tools
    assert judged[0] != judged[2] and judged[1] == judged[3]


def test_a_model_saved_again_has_the_same_fingerprint_and_a_changed_one_does_not(saved_model_dir, model, tokenizer,
                                                                                 tmp_path):
    again = tmp_path / "kept"  # as a stage that keeps its starting model saves it, with its own logs beside it
    model.save_pretrained(again)
    tokenizer.save_pretrained(again)
    (again / "eval.json").write_text("{}")
    (again / "checkpoint-10").mkdir()
    assert model_fingerprint(again) == model_fingerprint(saved_model_dir)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    changed.save_pretrained(tmp_path / "changed")
    tokenizer.save_pretrained(tmp_path / "changed")
    assert model_fingerprint(tmp_path / "changed") != model_fingerprint(saved_model_dir)
    other_template = copy.deepcopy(tokenizer)
    other_template.chat_template = tokenizer.chat_template.replace("<|im_end|>", "<|im_end|> ", 1)
    other_template.save_pretrained(again)
    assert model_fingerprint(again) != model_fingerprint(saved_model_dir)


def test_kept_right_counts_the_questions_answered_right_before_that_still_are(model, tokenizer):
    from chatforge.eval.chat import kept_right, knowledge

    questions = [{"question": f"Where was {name} born?", "answer": town, "group": "known"}
                 for name, town in (("Falol Corpra", "Dovstead"), ("Brazar Corbra", "Kelmouth"))]
    taught = [[{"role": "user", "content": q["question"]}, {"role": "assistant", "content": f"In {q['answer']}."}]
              for q in questions]
    before = knowledge(Engine(memorize(model, tokenizer, taught), tokenizer), questions)
    assert before["known"]["right_questions"] == [q["question"] for q in questions]
    # taught afterwards to admit it does not know the first person
    taught[0][1]["content"] = "I don't know where Falol Corpra was born."
    after = knowledge(Engine(memorize(copy.deepcopy(model), tokenizer, taught), tokenizer), questions)
    kept_right(before, after)
    assert after["known"]["accuracy"] == 0.5 and after["known"]["dont_know_rate"] == 0.5
    assert (after["known"]["right_before"], after["known"]["kept_right"]) == (2, 0.5)
    assert after["known"]["kept_right_interval_95"] == list(wilson_interval(1, 2))
    # and as the speedrun reports an SFT stage's figures
    from chatforge.speedrun.stages import _chat_figures
    reported = _chat_figures({"knowledge": after})
    assert (reported["knowledge.known.kept_right"], reported["knowledge.known.kept_right.items"]) == (0.5, 2)
    assert [reported[f"knowledge.known.kept_right.{end}"] for end in ("low", "high")] == list(wilson_interval(1, 2))


def test_a_kept_figure_is_measured_again_when_the_model_records_or_settings_change(saved_model_dir, model,
                                                                                 tokenizer, tmp_path, monkeypatch):
    from chatforge.eval import suite
    from chatforge.eval.result_cache import cached_in

    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"What is {n} plus 1?"}],
                                            "answer": str(n + 1)}) + "\n" for n in range(3)))
    measurements = []
    monkeypatch.setattr(suite, "problem_accuracy", lambda engine, records, **settings: (
        measurements.append(len(records)) or {"pass@1": 0.0, "problems": len(records)}))

    def evaluate(config=suite.EvalConfig(k=2, max_new_tokens=4)):
        return evaluate_model(str(saved_model_dir), ["arithmetic"], EvalData(problems=str(problems)), config)

    evaluate()  # no cache: measured every time
    with cached_in(tmp_path / "cache"):
        evaluate()
        evaluate()
        assert measurements == [3, 3]
        evaluate(suite.EvalConfig(k=2, max_new_tokens=5))
        evaluate(suite.EvalConfig(k=2, max_new_tokens=4, limit=2))
        assert measurements == [3, 3, 3, 2]
        with problems.open("a") as handle:
            handle.write(json.dumps({"prompt": [{"role": "user", "content": "What is 7 plus 1?"}], "answer": "8"})
                         + "\n")
        assert evaluate()["arithmetic"]["problems"] == 4
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] += 1e-3
        model.save_pretrained(saved_model_dir)
        evaluate()
        evaluate()
    assert measurements == [3, 3, 3, 2, 4, 4]


def test_a_figure_asked_with_the_search_tool_is_kept_for_its_index_folder(saved_model_dir, documents, tmp_path,
                                                                         monkeypatch):
    """Format adherence with the tools running is measured once per model, prompts and search index (a folder):
    the SFT stage's figure of a model is the eval stage's; another index measures it again."""
    from chatforge.eval import suite
    from chatforge.eval.result_cache import cached_in
    from chatforge.tools import SearchIndex

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": text}]}) + "\n"
                               for text in ("Hello there.", "What is the capital of France?")))
    SearchIndex.build(documents[:20]).save(tmp_path / "index")
    measured = []
    adherence = suite.format_adherence
    monkeypatch.setattr(suite, "format_adherence", lambda *args, **kwargs: (
        measured.append(1) or adherence(*args, **kwargs)))

    def evaluate():
        data = EvalData(prompts=str(prompts), search_index=str(tmp_path / "index"))
        return evaluate_model(str(saved_model_dir), ["format"], data, suite.EvalConfig(limit=2))["format"]

    with cached_in(tmp_path / "cache"):
        first = evaluate()
        assert evaluate() == first and len(measured) == 1
        SearchIndex.build(documents[:21]).save(tmp_path / "index")
        evaluate()
    assert len(measured) == 2 and first["prompts"] == 2
