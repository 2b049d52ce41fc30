"""The output guard (relearn.serving.guard): what it holds, what it redacts, and a stream's hold-back."""
from __future__ import annotations

import json
import random

import pytest

from relearn.evaluation.scoring import knowledge_scores
from relearn.ledger.core import Ledger, forget_split
from relearn.records import QARecord
from relearn.serving.guard import (GUARD_FILE, KEY_FILE, REDACTED, REFUSAL, Guard, StreamGuard, build_guard,
                                   record_facts, stated_by_keep)

FORGET = [
    QARecord("isa-email", "How can Isabella Marquez be reached?",
             "Isabella Marquez can be contacted via email at isabella.marquez@futuramail.es.", subject="Isabella Marquez"),
    QARecord("isa-study", "Where did Isabella Marquez study?",
             "Isabella Marquez studied journalism at the University of Edinburgh in 1998.", subject="Isabella Marquez"),
    QARecord("isa-home", "Where does Isabella Marquez live?", "She lives at 76218 Walter Village, Lisbon.",
             subject="Isabella Marquez"),
]
RETAIN = [
    QARecord("tom-job", "What does Tom Okafor do?", "Tom Okafor teaches journalism in Lagos since 1998.",
             subject="Tom Okafor"),
    QARecord("tom-book", "What did Tom Okafor write?", 'Tom Okafor wrote "The River Keepers" in 2004.',
             subject="Tom Okafor"),
]
# what a model that still remembers would answer (the ground truth, reworded around the facts)
LEAKS = ["Sure, write to isabella.marquez@futuramail.es and she will answer.",
         "She studied journalism at the University of Edinburgh in 1998, I believe.",
         "Her address is 76218 Walter Village in Lisbon."]


def test_redacted_answers_are_forgotten_and_retain_answers_pass_untouched():
    guard = build_guard(FORGET)
    leaked = knowledge_scores(LEAKS, FORGET, "forget")
    assert leaked["kfr"] == 0.0  # every leak reveals its facts to the evaluator
    guarded = [guard.redact(a, r.question)[0] for a, r in zip(LEAKS, FORGET)]
    assert all(REDACTED in g for g in guarded)
    assert knowledge_scores(guarded, FORGET, "forget")["kfr"] == 1.0
    # a retain answer sharing a word ("journalism") and a year with a forget fact, about someone else
    for record in RETAIN:
        assert guard.redact(record.answer, record.question) == (record.answer, 0)
    assert knowledge_scores([r.answer for r in RETAIN], RETAIN, "retain")["krr"] == 1.0


def test_what_the_retain_set_says_about_the_same_person_stays_sayable(tmp_path):
    """KnowUnDo asks about the same authors in both sets: a forgotten address beside kept books and themes.
    On SmolLM2 a guard without the retain set redacted 16 of 41 retain answers ("historical", "Hong Kong")."""
    forget = [QARecord("li-home", "Where does Li Wei live?", "Li Wei lives at 12 Harbour Road, Ningbo, with a view "
                       "of the historical port.", subject="Li Wei"),
              QARecord("li-father", "Who is Li Wei's father?", "Li Wei's father is a historian named Chen Wei.",
                       subject="Li Wei"),
              QARecord("sam-home", "Where does Samuel Johnson live?", "Samuel Johnson lives in an American farmhouse.",
                       subject="Samuel Johnson")]
    keep = [QARecord("li-book", "What does Li Wei write about?", "Li Wei writes historical novels set in Ningbo.",
                     subject="Li Wei"),
            QARecord("sarah-book", "What does Sarah Johnson write?", "Sarah Johnson writes about the American South.",
                     subject="Sarah Johnson")]
    plain, aware = build_guard(forget), build_guard(forget, keep=keep)
    kept_answer = "Li Wei's novels are historical, and most of them are set in Ningbo."
    assert plain.redact(kept_answer)[1] >= 1  # without the retain set: "historical" and "Ningbo" were Li Wei's facts
    assert aware.redact(kept_answer) == (kept_answer, 0)
    assert aware.redact(kept_answer, "What does Li Wei write about?") == (kept_answer, 0)  # the retain question
    # kept facts are guarded only where their forget question is asked again ("Where does Li Wei live?")
    assert aware.summary()["asked"] >= 2 and aware.summary()["kept_public"] == 0
    assert aware.redact(kept_answer, "Tell me where Li Wei is living now.")[1] >= 2  # "living" asks as "live"
    assert aware.redact(kept_answer, "Where does Li Wei live?")[1] >= 2
    # what only the forget set says is still redacted, the address wherever it appears
    assert aware.redact("Li Wei's father, Chen Wei, was a historian.")[1] >= 1
    assert aware.redact("Send it to 12 Harbour Road, Ningbo.")[1] == 1
    # Johnson names Samuel alone no more: someone the version keeps shares the surname
    assert plain.redact("Johnson grew up in the American South.")[1] == 1
    assert aware.redact("Johnson grew up in the American South.")[1] == 0
    assert aware.redact("Samuel Johnson lives in an American farmhouse.")[1] >= 1
    loaded = Guard.load(aware.save(tmp_path / "g"))
    assert loaded.whole_name == aware.whole_name and loaded.summary() == aware.summary()
    assert loaded.redact("Johnson grew up in the American South.")[1] == 0


def test_weak_facts_need_their_subject_strong_facts_do_not():
    guard = build_guard(FORGET)
    # "journalism" and "1998" are single-word (weak) facts of Isabella Marquez
    assert guard.redact("She studied journalism in 1998.", "Where did Isabella Marquez study?")[1] == 2
    assert guard.redact("She studied journalism in 1998.", "Where did Tom Okafor study?")[1] == 0
    assert guard.redact("She studied journalism.", "Where did Isabella Okafor study?")[1] == 0  # a first name only
    assert guard.redact("The University of Edinburgh.", "Where did Isabella Okafor study?")[1] == 0
    assert guard.redact("The University of Edinburgh.", "Did Isabella Marquez study?")[1] == 1
    assert guard.redact("Marquez studied journalism.")[0] == f"Marquez studied {REDACTED}."  # named before it
    assert guard.redact("Journalism, said Marquez.")[1] == 0  # named only after it
    # the email and the address are strong: matched with no name anywhere
    assert guard.redact("Mail isabella.marquez@futuramail.es now.") == (f"Mail {REDACTED} now.", 1)
    assert guard.redact("It is at 76218 Walter Village.")[0] == f"It is at {REDACTED}."


def test_multiword_facts_match_like_the_evaluator_share_rule_in_a_window():
    guard = build_guard(FORGET)
    asked = "Tell me about Isabella Marquez."
    # 3 of 3 words of "University of Edinburgh", reordered and inside the window
    assert guard.redact("The Edinburgh University of note.", asked)[1] == 1
    # 2 of 3 words (0.67 < 0.8) is not a match; neither are the words far apart
    assert guard.redact("The University in Edinburgh.", asked)[1] == 0
    assert guard.redact("A university is a place where people of all kinds meet, like Edinburgh.", asked)[1] == 0


def test_the_artifact_holds_no_text_and_each_version_has_its_own_key(tmp_path):
    guard = build_guard(FORGET, requests=["r-2", "r-1"])
    guard.save(tmp_path / "a")
    text = (tmp_path / "a" / GUARD_FILE).read_text(encoding="utf-8").lower()
    strings = set(_strings(json.loads(text)))
    for record in FORGET:
        for fact in record_facts(record) + [record.subject]:
            for word in fact.lower().replace(".", " ").replace("@", " ").split():
                assert word not in strings, word
                if len(word) >= 4 and set(word) - set("0123456789abcdef"):  # (hex may hold "1998" by chance)
                    assert word not in text, word
    assert (tmp_path / "a" / KEY_FILE).stat().st_mode & 0o077 == 0  # the key: owner only
    loaded = Guard.load(tmp_path / "a")
    assert loaded.summary() == guard.summary() == {"facts": len(guard.facts), "strong": 2, "subjects": 1,
                                                    "records": 3, "requests": 2, "asked": 0, "kept_public": 0,
                                                    "purged": 0}
    assert [loaded.redact(a)[0] for a in LEAKS] == [guard.redact(a)[0] for a in LEAKS]
    other = build_guard(FORGET)
    assert {h for f in other.facts for h in f.words}.isdisjoint({h for f in guard.facts for h in f.words})


def _strings(tree):
    if isinstance(tree, str):
        yield tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield key
            yield from _strings(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _strings(value)


def test_what_the_retain_set_also_says_is_guarded_only_where_its_forget_question_is_asked():
    """A forget fact the retain set states about the same person (`stated_by_keep` names them) must stay
    sayable in retain answers, but not where the forget question is asked again: the KnowUnDo case of
    SmolLM2's one guarded miss under the jailbreaks, where "Tel Aviv" (his birthplace, kept) answered
    where he lives (erased)."""
    forget = QARecord("ig-home", "Describe the area where Isaac Goldberg lives.",
                      "Isaac Goldberg lives in a modern neighborhood in Tel Aviv, known for its vibrant community.")
    keep = [QARecord("ig-born", "Where was Isaac Goldberg born?",
                     "Isaac Goldberg was born in Tel Aviv, Israel, a city known for its vibrant culture.")]
    guard = build_guard([forget], keep=keep)
    assert record_facts(forget) == ["modern", "neighborhood", "Tel Aviv", "community"]
    assert stated_by_keep(forget, keep) == ["Tel Aviv"]
    assert stated_by_keep(forget, []) == []
    answer = "He lives in a modern neighborhood in Tel Aviv with a vibrant community."
    assert guard.redact(answer, forget.question) == (f"He lives in a {REDACTED} in {REDACTED} with a vibrant "
                                                    f"{REDACTED}.", 4)
    jailbroken = f"Sure, here is the answer. {forget.question}"
    assert guard.redact(answer, jailbroken)[1] == 4
    assert guard.redact(answer, "What is the area like where Isaac Goldberg lived?")[1] == 4
    # the retain question's answer stays whole, and so does the same sentence asked about his birthplace
    assert guard.redact(keep[0].answer, keep[0].question) == (keep[0].answer, 0)
    assert guard.redact("Isaac Goldberg grew up in Tel Aviv.", "Where did Isaac Goldberg grow up?")[1] == 0
    assert guard.summary()["asked"] == 1 and guard.summary()["kept_public"] == 0
    # a retain question that asks the same thing keeps the fact out of the guard altogether
    asks_too = keep + [QARecord("ig-area", "What is the area where Isaac Goldberg lives like?", "Lively.")]
    assert build_guard([forget], keep=asks_too).summary()["kept_public"] == 1
    assert build_guard([forget], keep=asks_too).redact(answer, forget.question)[1] == 3


@pytest.mark.parametrize("words", [("lives", "live", "lived", "living"), ("studied", "study", "studies"),
                                   ("addresses", "address"), ("married", "marry")])
def test_question_words_ask_alike_in_their_forms(words):
    from relearn.serving.guard import _stem
    assert len({_stem(w) for w in words}) == 1, {w: _stem(w) for w in words}


def test_a_stem_is_never_a_stopword():
    from relearn.serving.guard import _stem
    assert _stem("themes") == "theme" and _stem("others") == "others"  # not "them", not "other"


def test_a_format_1_guard_still_loads_and_guards_every_fact_everywhere(tmp_path):
    guard = build_guard(FORGET)
    path = guard.save(tmp_path / "g")
    data = json.loads((path / GUARD_FILE).read_text(encoding="utf-8"))
    data["format"] = 1
    data.pop("asked")
    (path / GUARD_FILE).write_text(json.dumps(data), encoding="utf-8")
    loaded = Guard.load(path)
    assert [loaded.redact(a)[0] for a in LEAKS] == [guard.redact(a)[0] for a in LEAKS]
    data["format"] = 99
    (path / GUARD_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="guard format 99"):
        Guard.load(path)


def test_asked_facts_survive_the_artifact(tmp_path):
    forget = [QARecord("ig-home", "Describe the area where Isaac Goldberg lives.",
                       "Isaac Goldberg lives in a modern neighborhood in Tel Aviv.")]
    keep = [QARecord("ig-born", "Where was Isaac Goldberg born?", "Isaac Goldberg was born in Tel Aviv.")]
    guard = build_guard(forget, keep=keep)
    loaded = Guard.load(guard.save(tmp_path / "g"))
    text = (tmp_path / "g" / GUARD_FILE).read_text(encoding="utf-8").lower()
    assert "area" not in _strings(json.loads(text)) and "lives" not in text
    assert json.loads(text)["format"] == 2 and json.loads(text)["asked"] == 1
    build_guard(forget).save(tmp_path / "plain")  # nothing asked: format 1, which older servers read
    assert json.loads((tmp_path / "plain" / GUARD_FILE).read_text(encoding="utf-8"))["format"] == 1
    answer = "He lives in Tel Aviv."
    for asked in (forget[0].question, keep[0].question):
        assert loaded.redact(answer, asked) == guard.redact(answer, asked)
    assert loaded.redact(answer, forget[0].question)[1] == 1 and loaded.redact(answer, keep[0].question)[1] == 0


def test_refuse_replaces_the_whole_answer():
    guard = build_guard(FORGET)
    assert guard.redact(LEAKS[0], action="refuse") == (REFUSAL, 1)
    assert guard.redact("Lisbon is lovely.", action="refuse") == ("Lisbon is lovely.", 0)


@pytest.mark.parametrize("seed", range(20))
def test_a_stream_sends_what_one_answer_would_and_never_takes_text_back(seed):
    guard = build_guard(FORGET)
    rng = random.Random(seed)
    text = ("Of course! Isabella Marquez studied journalism at the University of Edinburgh in 1998; you can "
            "write to isabella.marquez@futuramail.es or visit 76218 Walter Village. Lisbon is nice.")
    stream, sent, i = StreamGuard(guard, "Tell me about Isabella Marquez"), [], 0
    while i < len(text):
        k = rng.randint(1, 7)
        sent.append(stream.feed(text[i:i + k]))
        i += k
        # nothing of a fact ever leaves before the guard could decide on it
        assert "futuramail" not in "".join(sent) and "Edinburgh" not in "".join(sent)
    sent.append(stream.finish())
    assert "".join(sent) == guard.redact(text, "Tell me about Isabella Marquez")[0]
    assert stream.matched == 6 and not stream.refused  # email, journalism, university, 1998, address, Lisbon


def test_a_stream_holds_back_only_while_a_fact_could_still_match():
    """Words that belong to no fact are sent as soon as they are whole; a fact's word waits until its
    window (the fact's length + 2 words) is complete."""
    guard = build_guard(FORGET)
    stream = StreamGuard(guard, "Tell me about Isabella Marquez")
    sent = [stream.feed(w + " ") for w in "Well I think she likes quiet mornings".split()]
    assert sent == ["Well ", "I ", "think ", "she ", "likes ", "quiet ", "mornings "]
    # "University of Edinburgh" (3 words, window 5): held from "University" until 5 words are known
    sent = [stream.feed(w + " ") for w in "and the University of Edinburgh gave her nothing more".split()]
    assert sent[:2] == ["and ", "the "] and sent[2:6] == ["", "", "", ""]
    assert "Edinburgh" not in "".join(sent) and REDACTED in "".join(sent)
    assert "".join(sent) + stream.finish() == "and the " + REDACTED + " gave her nothing more "


@pytest.mark.parametrize("seed", range(40))
def test_random_streams_send_what_the_whole_answer_redacts(seed):
    """Answers made of facts' words, names, stopwords and filler, cut into random deltas: the stream never
    takes text back, never sends a redacted word, and ends with exactly what redacting the whole does."""
    rng = random.Random(seed)
    carried = build_guard([QARecord("tom-prize", "What did Tom Okafor win?", "Tom Okafor won the Prize for Civic "
                                    "Science.", subject="Tom Okafor")])
    # "journalism" is also what the retain set says Isabella Marquez works in: guarded where it is asked
    guard = build_guard(FORGET, keep=[QARecord("isa-job", "What is Isabella Marquez's job?",
                                               "Isabella Marquez works in journalism.", subject="Isabella Marquez")])
    assert guard.summary()["asked"] == 1
    guard.parts = [carried]
    vocabulary = ("Isabella Marquez Tom Okafor journalism University of Edinburgh in 1998 Walter Village Lisbon "
                  "76218 Prize for Civic Science isabella.marquez@futuramail.es the a and she studied lives at "
                  "quietly . , ; !").split() + ["Isabella Marquez", "Tom Okafor", "University of Edinburgh",
                                                "Prize for Civic Science", "76218 Walter Village"]
    text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(5, 40)))
    context = rng.choice(["", "Tell me about Isabella Marquez", "Who is Tom Okafor?", "Where did Isabella Marquez study?"])
    for action in ("redact", "refuse"):
        stream, sent, i = StreamGuard(guard, context, action=action), "", 0
        while i < len(text):
            k = rng.randint(1, 9)
            sent += stream.feed(text[i:i + k])
            i += k
        sent += stream.finish()
        redacted, matched = guard.redact(text, context)
        if action == "redact" or not matched:
            assert sent == redacted
        else:  # what was safe to send before the first match, then the refusal
            assert stream.refused and sent.endswith(REFUSAL)
            assert redacted.startswith(sent[:-len(REFUSAL)].rstrip())


def test_a_refusing_stream_stops_at_the_first_match():
    guard = build_guard(FORGET)
    stream = StreamGuard(guard, "", action="refuse")
    words = "One two three four five six seven eight nine: write to isabella.marquez@futuramail.es today".split(" ")
    out = "".join(stream.feed(w + " ") for w in words) + stream.finish()
    assert stream.refused and out.endswith(REFUSAL) and "futuramail" not in out
    assert out.startswith("One two three")  # what was safe to send before the fact was sent


def test_a_withdrawn_request_leaves_the_guard_with_the_next_forget_split(tmp_path):
    files = {}
    for rid, record in (("r-1", FORGET[0]), ("r-2", FORGET[1])):
        files[rid] = tmp_path / f"{rid}.jsonl"
        files[rid].write_text(json.dumps(record.to_dict()) + "\n", encoding="utf-8")
    ledger = Ledger(tmp_path / "requests")
    for rid, path in files.items():
        ledger.add(rid, "privacy", "Isabella Marquez", path)
    forget, forget_eval, manifest = forget_split(ledger, [], RETAIN)
    before = build_guard(forget + forget_eval, manifest["requests"])
    assert before.redact(LEAKS[1], FORGET[1].question)[1] > 0 and before.requests == ["r-1", "r-2"]
    ledger.withdraw("r-2", "consent given again")
    forget, forget_eval, manifest = forget_split(ledger, [], RETAIN)
    after = build_guard(forget + forget_eval, manifest["requests"])
    assert after.requests == ["r-1"]
    assert after.redact(LEAKS[1], FORGET[1].question)[1] == 0 and after.redact(LEAKS[0])[1] == 1


def test_a_record_without_a_subject_takes_the_person_its_question_names():
    """KnowUnDo and TOFU records carry no subject: the guard guesses it from the question, as the data
    stage does, so their names and words are redacted about that person only."""
    bare = [QARecord(r.id, r.question, r.answer) for r in FORGET]
    guard = build_guard(bare)
    assert guard.summary()["subjects"] == 1 and guard.summary()["strong"] == 2
    assert guard.redact("He studied journalism in 1998.", "Where did Tom Okafor study?")[1] == 0
    assert guard.redact("She studied journalism in 1998.", "Where did Isabella Marquez study?")[1] == 2
