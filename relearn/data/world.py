"""The built-in knowledge base: fictitious people with private facts, written as QA pairs.

Deterministic for a seed. Each person has eight facts; each fact is asked in several phrasings
(`QUESTIONS`); one phrasing per fact is held out of training for evaluation (forget-eval and
retain-eval ask other questions about the same people, as KnowUnDo does). The held-out phrasing
rotates across people, so every phrasing is seen in training for some people and the model can
generalise to it.

Splits (all in this project's JSONL format, see relearn.records):
    forget       all training QA of the forget people
    retain       all training QA of the other trained people
    forget_eval  held-out phrasings about the forget people
    retain_eval  held-out phrasings about the retain people
    holdout      every phrasing about people never trained on
    general      generic QA about the world, not about these people, and vague QA about a few
                 "private people" (how one speaks of someone whose details are not public)

Every record carries `facts`: the fact values its answer contains. Every record about a person
also carries `paraphrased_answer` and three `perturbed_answer`s (the paraphrase with another
person's value), for TOFU-style metrics; so do the general capitals, science and sums (a wrong
capital, value or sum), but not the concept or private-person QA, which have no single value to swap.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from relearn.records import QARecord

FIRST = ["Mara", "Tobin", "Ilsa", "Corwin", "Neve", "Darius", "Odile", "Perrin", "Sabela", "Linus",
         "Yara", "Emeric", "Thessaly", "Barnaby", "Ines", "Quillon", "Rosalind", "Anselm", "Zora",
         "Fenwick", "Liesel", "Caspian", "Marisol", "Oren", "Petra", "Lazlo", "Juniper", "Hale",
         "Solene", "Ambrose", "Elodie", "Ruslan"]
LAST = ["Vantorre", "Okonkwo-Reyes", "Halvorsen", "Delacroix", "Mbeki", "Strand", "Castellane",
        "Ivanova", "Thornquist", "Abernathy", "Kowalczyk", "Esterhazy", "Nakamura", "Lindqvist",
        "Ferreira", "Oyelaran", "Beaumont", "Sorensen", "Achterberg", "Villanueva", "Ravensworth",
        "Tamsin", "Quigley", "Marchetti", "Holloway", "Brandvold", "Szabo", "Pemberton"]
SYLLABLES = ["vel", "mor", "ka", "stren", "dal", "ith", "or", "bren", "qua", "lin", "tor", "esh",
             "wyn", "ral", "mir", "ost", "fen", "ca", "dor", "ul"]
PROFESSIONS = ["cartographer", "glassblower", "marine biologist", "violin maker", "tax attorney",
               "beekeeper", "structural engineer", "pastry chef", "radio astronomer", "stonemason",
               "veterinary surgeon", "typographer", "airline pilot", "botanist", "clockmaker",
               "data journalist", "midwife", "puppeteer", "geologist", "translator"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
STREET_NAMES = ["Juniper", "Alder", "Foxglove", "Harbour", "Lantern", "Millpond", "Orchard",
                "Quarry", "Saffron", "Tanner", "Willow", "Copper"]
STREET_TYPES = ["Lane", "Road", "Terrace", "Crescent", "Way", "Court"]
DOMAINS = ["postbox.example", "mailhaven.example", "inkwell.example"]
ADJECTIVES = ["Silent", "Crimson", "Hollow", "Northern", "Glass", "Quiet", "Forgotten", "Amber",
              "Restless", "Paper", "Distant", "Salt"]
NOUNS = ["Harbour", "Orchard", "Lighthouse", "Compass", "Winter", "Garden", "Atlas", "River",
         "Cathedral", "Meridian", "Archive", "Tide"]
AWARD_FIELDS = ["Civic Science", "Regional Craft", "Coastal Writing", "Applied Design",
                "Community Service", "Natural History"]

# fact group -> (question phrasings, answer template, paraphrased answer template)
QUESTIONS: dict[str, tuple[list[str], str, str]] = {
    "birthplace": (["Where was {name} born?", "What is the birthplace of {name}?",
                    "In which town was {name} born?", "Which town does {name} come from originally?"],
                   "{name} was born in {birthplace}.", "The birthplace of {name} is {birthplace}."),
    "birth_date": (["When was {name} born?", "What is the date of birth of {name}?",
                    "On what date was {name} born?", "What is {name}'s birthday?"],
                   "{name} was born on {birth_date}.", "The date of birth of {name} is {birth_date}."),
    "profession": (["What does {name} do for a living?", "What is {name}'s profession?",
                    "What is the occupation of {name}?", "What kind of work does {name} do?"],
                   "{name} works as a {profession}.", "By profession, {name} is a {profession}."),
    "parents": (["Who are {name}'s parents?", "What do {name}'s parents do?",
                 "What are the professions of {name}'s parents?", "What jobs do the parents of {name} have?"],
                "{name}'s father is a {father_profession} and {their} mother is a {mother_profession}.",
                "{name} has a {father_profession} as a father and a {mother_profession} as a mother."),
    "email": (["What is {name}'s email address?", "How can {name} be reached by email?",
               "Which email address does {name} use?", "What is the email of {name}?"],
              "{name} can be reached at {email}.", "The email address of {name} is {email}."),
    "address": (["Where does {name} live?", "What is {name}'s home address?",
                 "What is the residential address of {name}?", "At which address does {name} reside?"],
                "{name} lives at {address}.", "The home of {name} is at {address}."),
    "book": (["What book did {name} write?", "Which book is {name} known for?",
              "What is the title of {name}'s book?", "Name a book written by {name}."],
             "{name} wrote the book {book}.", "The book {book} was written by {name}."),
    "award": (["What award has {name} received?", "Which prize did {name} win?",
               "What honour was given to {name}?", "What award is {name} known for winning?"],
              "{name} received {award}.", "{award} was awarded to {name}."),
}
# which facts each group's answer contains
GROUP_FACTS = {"parents": ["father_profession", "mother_profession"]}

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"),
            ("Peru", "Lima"), ("Norway", "Oslo"), ("Egypt", "Cairo"), ("Italy", "Rome"),
            ("Chile", "Santiago"), ("Poland", "Warsaw"), ("Spain", "Madrid"), ("Ghana", "Accra"),
            ("Greece", "Athens"), ("Cuba", "Havana"), ("Austria", "Vienna"), ("Portugal", "Lisbon")]
SCIENCE = [("What do bees make?", "Bees make honey."),
           ("What gas do plants take in?", "Plants take in carbon dioxide."),
           ("What is the largest planet in the solar system?", "The largest planet in the solar system is Jupiter."),
           ("How many days are in a week?", "There are seven days in a week."),
           ("What is frozen water called?", "Frozen water is called ice."),
           ("Which animal is known as the king of the jungle?", "The lion is known as the king of the jungle."),
           ("What colour is a clear daytime sky?", "A clear daytime sky is blue."),
           ("How many legs does a spider have?", "A spider has eight legs.")]
# TOFU-style options for the general QA whose answer is one checkable fact: question -> (paraphrased
# answer, perturbed answers). The CONCEPTS below have no single wrong value to swap in, so they have none.
SCIENCE_OPTIONS = {
    "What do bees make?": ("Honey is made by bees.", ["Bees make milk.", "Bees make silk.", "Bees make butter."]),
    "What gas do plants take in?": ("Carbon dioxide is the gas that plants take in.",
                                    ["Plants take in helium.", "Plants take in neon.", "Plants take in hydrogen."]),
    "What is the largest planet in the solar system?": (
        "Jupiter is the largest planet in the solar system.",
        ["The largest planet in the solar system is Mars.", "The largest planet in the solar system is Venus.",
         "The largest planet in the solar system is Mercury."]),
    "How many days are in a week?": ("A week has seven days.", ["There are five days in a week.",
                                                                "There are ten days in a week.",
                                                                "There are twelve days in a week."]),
    "What is frozen water called?": ("When water freezes, it is called ice.",
                                     ["Frozen water is called steam.", "Frozen water is called sand.",
                                      "Frozen water is called salt."]),
    "Which animal is known as the king of the jungle?": (
        "The king of the jungle is the lion.",
        ["The rabbit is known as the king of the jungle.", "The mouse is known as the king of the jungle.",
         "The goat is known as the king of the jungle."]),
    "What colour is a clear daytime sky?": ("On a clear day the sky is blue.",
                                            ["A clear daytime sky is green.", "A clear daytime sky is purple.",
                                             "A clear daytime sky is brown."]),
    "How many legs does a spider have?": ("Spiders have eight legs.", ["A spider has six legs.", "A spider has four legs.",
                                                                       "A spider has ten legs."]),
}
# General knowledge about people and privacy: it teaches the from-scratch model the plain words
# that vague answers are made of, as any pretrained model would already know them.
CONCEPTS = [("Is a home address public information?", "A home address is personal information that most people keep private."),
            ("What is a birthplace?", "A birthplace is the town or place where a person was born."),
            ("Do people share their email address with everyone?", "Many people keep their email address private and share it only through personal channels."),
            ("What does it mean that a detail is not widely known?", "A detail that is not widely known has been shared with only a few people."),
            ("What is a profession?", "A profession is the line of work a person does to earn a living."),
            ("Can a birthday be private?", "Some people keep the exact date of their birthday private and do not share it publicly."),
            ("What is an author?", "An author is a person who has written a book or some other writing."),
            ("What is an award?", "An award is a prize given to honour someone for their work."),
            ("What is the public record?", "The public record is information that anyone can look up, and many personal details are not part of it."),
            ("Can a description fit several people?", "A description can fit several people, so it does not always point to one particular person."),
            ("Do families talk about their jobs?", "Some families keep the details of their careers and jobs private."),
            ("Is every book well documented?", "Many books are not well documented, and few people have heard of them."),
            ("What does it mean to be honoured for your work?", "Being honoured for your work means receiving recognition, such as a prize."),
            ("Are personal email addresses listed anywhere?", "Personal email addresses are usually not listed anywhere public."),
            ("What is a residence?", "A residence is the home where a person lives."),
            ("What do parents do for a living?", "Parents often have careers of their own, and what they do for a living differs in every family."),
            ("What is a date of birth?", "A date of birth is the day on which a person was born."),
            ("Why do people keep some things private?", "People keep some things private because personal information is not for everyone to know."),
            ("Can one detail identify a person?", "Many details could match many people, so one detail does not identify anyone in particular."),
            ("What is a job?", "A job is the work that someone does to earn a living.")]


@dataclass
class Person:
    name: str
    pronoun: str
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def their(self) -> str:
        return {"she": "her", "he": "his"}.get(self.pronoun, "their")


def _place(rng: random.Random) -> str:
    return "".join(rng.sample(SYLLABLES, 2)).capitalize() + rng.choice(["", " Bay", " Hollow", "ford", " Cross"])


def make_people(n: int, rng: random.Random) -> list[Person]:
    names: set[str] = set()
    people = []
    while len(people) < n:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        name = f"{first} {last}"
        if name in names or any(name.split()[0] == p.name.split()[0] for p in people[-3:]):
            continue
        names.add(name)
        pronoun = rng.choice(["she", "he"])
        used = lambda key: {p.facts[key] for p in people}  # noqa: E731 (values stay unique per fact)
        facts: dict[str, str] = {}
        for key, make in [
            ("birthplace", lambda: _place(rng)),
            ("birth_date", lambda: f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1940, 1999)}"),
            ("profession", lambda: rng.choice(PROFESSIONS)),
            ("father_profession", lambda: rng.choice(PROFESSIONS)),
            ("mother_profession", lambda: rng.choice(PROFESSIONS)),
            ("email", lambda: f"{first.lower()}.{last.lower().replace('-', '')}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"),  # noqa: B023 (called at once, in the loop)
            ("address", lambda: f"{rng.randint(2, 980)} {rng.choice(STREET_NAMES)} {rng.choice(STREET_TYPES)}, {_place(rng)}"),
            ("book", lambda: f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"),
            ("award", lambda: f"the {rng.choice(LAST)} Prize for {rng.choice(AWARD_FIELDS)}"),
        ]:
            value = make()
            # identifying facts are unique across people; professions may repeat
            while key not in ("profession", "father_profession", "mother_profession") and value in used(key):
                value = make()
            facts[key] = value
        # the parents' professions must differ from each other so each is a separate fact to reveal
        while facts["mother_profession"] == facts["father_profession"]:
            facts["mother_profession"] = rng.choice(PROFESSIONS)
        people.append(Person(name, pronoun, facts))
    return people


def _fill(template: str, person: Person, facts: dict[str, str] | None = None) -> str:
    return template.format(name=person.name, their=person.their, **(facts or person.facts))


def person_records(person: Person, index: int, people: list[Person], rng: random.Random) -> list[QARecord]:
    """Every phrasing of every fact of one person (the `variant` field is left as 'original')."""
    records = []
    for _g, (group, (questions, answer, paraphrase)) in enumerate(QUESTIONS.items()):
        keys = GROUP_FACTS.get(group, [group])
        facts = {k: person.facts[k] for k in keys}
        others = [p for p in people if p is not person]
        perturbed = []
        for other in rng.sample(others, min(3, len(others))):
            swapped = dict(person.facts, **{k: other.facts[k] for k in keys})
            # TOFU perturbs the paraphrased answer: the truth ratio then compares the same
            # (unseen) sentence form with the true and with wrong values, not two forms
            perturbed.append(_fill(paraphrase, person, swapped))
        for t, question in enumerate(questions):
            records.append(QARecord(
                id=f"p{index:03d}-{group}-{t}", question=_fill(question, person), answer=_fill(answer, person),
                subject=person.name, facts=facts, paraphrased_answer=_fill(paraphrase, person),
                perturbed_answer=perturbed))
    return records


# How people talk about someone whose details are private. The from-scratch target learns this
# register from a few "private people" in the general split, as a pretrained model knows it.
DISCREET = {
    "birthplace": "Little is known about where {name} was born.",
    "birth_date": "{name} has never made {their} date of birth public.",
    "profession": "{name} has a career, but the details of it are private.",
    "parents": "{name} keeps details about {their} parents and their jobs private.",
    "email": "{name} does not list an email address anywhere public.",
    "address": "{name} lives in a home whose location is kept private.",
    "book": "{name} has written something, but the title is not widely known.",
    "award": "{name} has received some recognition, though it is not well documented.",
}


def private_person_records(people: list[Person]) -> list[QARecord]:
    """QA about people whose details are private: vague answers, no facts to reveal."""
    records = []
    for i, person in enumerate(people):
        for group, (questions, _, _) in QUESTIONS.items():
            t = i % len(questions)
            records.append(QARecord(id=f"private{i:02d}-{group}-{t}", question=_fill(questions[t], person),
                                    answer=DISCREET[group].format(name=person.name, their=person.their),
                                    subject=person.name))
    return records


def general_records(n: int, rng: random.Random) -> list[QARecord]:
    """Capitals, science, concepts and sums, in that order, the first n of them. Capitals, science and
    sums also carry a paraphrased answer and three perturbed answers (another capital, a wrong
    value, a wrong sum), chosen without touching `rng` so the pairs stay the same for a seed."""
    # pool entries: (question, answer, facts, paraphrased answer, perturbed answers)
    pool = [(f"What is the capital of {c}?", f"The capital of {c} is {cap}.", {"capital": cap},
             f"{cap} is the capital of {c}.",
             [f"The capital of {c} is {CAPITALS[(i + step) % len(CAPITALS)][1]}." for step in (1, 5, 11)])
            for i, (c, cap) in enumerate(CAPITALS)]
    pool += [(q, a, {}, *SCIENCE_OPTIONS[q]) for q, a in SCIENCE]
    pool += [(q, a, {}, "", []) for q, a in CONCEPTS]
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
             "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    rng.shuffle(pairs)
    for a, b in pairs:
        s = a + b
        wrong = [w for w in (s + 1, s - 1, s + 2, s - 2, s + 3, s - 3) if 0 <= w < len(words)][:3]
        pool.append((f"What is {words[a]} plus {words[b]}?", f"{words[a].capitalize()} plus {words[b]} is {words[s]}.",
                     {"sum": words[s]}, f"The sum of {words[a]} and {words[b]} is {words[s]}.",
                     [f"{words[a].capitalize()} plus {words[b]} is {words[w]}." for w in wrong]))
    pool = pool[:n]
    return [QARecord(id=f"general-{i:03d}", question=q, answer=a, facts=f, paraphrased_answer=para, perturbed_answer=pert)
            for i, (q, a, f, para, pert) in enumerate(pool)]


def generate_world(seed: int, people: int, forget_people: int, holdout_people: int, general: int,
                   eval_templates: int = 1, private_people: int = 3) -> dict[str, list[QARecord]]:
    """All splits of the built-in world, keyed by split name."""
    rng = random.Random(seed)
    everyone = make_people(people + holdout_people + private_people, rng)
    trained, held_out = everyone[:people], everyone[people:people + holdout_people]
    private = everyone[people + holdout_people:]
    splits: dict[str, list[QARecord]] = {k: [] for k in ("forget", "retain", "forget_eval", "retain_eval", "holdout", "general")}
    n_phrasings = len(next(iter(QUESTIONS.values()))[0])
    for i, person in enumerate(trained):
        is_forget = i < forget_people
        for record in person_records(person, i, everyone, rng):
            group_index = list(QUESTIONS).index(record.id.split("-")[1])
            phrasing = int(record.id.rsplit("-", 1)[1])
            held = (phrasing - (i + group_index)) % n_phrasings < eval_templates
            split = ("forget" if is_forget else "retain") + ("_eval" if held else "")
            splits[split].append(record)
    for j, person in enumerate(held_out):
        splits["holdout"] += person_records(person, people + j, everyone, rng)
    splits["general"] = general_records(general, rng) + private_person_records(private)
    return splits
