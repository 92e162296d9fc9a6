#!/usr/bin/env python
"""Generate the tiny synthetic instruction-tuning datasets in recipes/data/.

The data is written by this project (not scraped or derived from any other
dataset) and is released under the project licence (Apache-2.0). It is meant
for smoke tests and demos that SFT tiny, randomly initialised models for a few
dozen steps, so it is short, regular, plain ASCII English, and every answer is
correct by construction.

Run from the repository root:

    python recipes/data/make_tiny_data.py

Output is deterministic (seeded with ``random.Random(0)``). Everything except
the Parquet file uses only the standard library; ``tiny_text.parquet`` needs
``pyarrow`` (already a dependency of ``datasets``). If pyarrow is missing,
the other files are still written and a warning is printed.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys

OUT_DIR = os.path.dirname(os.path.abspath(__file__))
SEED = 0

N_CHAT = 300
N_ALPACA = 60
N_SHAREGPT = 60
N_PROMPT_COMPLETION = 60
N_TEXT = 60

SYSTEM_PROMPTS = [
    "You are a helpful assistant. Answer briefly.",
    "You are a helpful assistant.",
    "You are a friendly tutor. Keep your answers short.",
    "Give short and correct answers.",
]

# --------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"),
    ("Spain", "Madrid"), ("Portugal", "Lisbon"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("India", "New Delhi"), ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"), ("Peru", "Lima"),
    ("Chile", "Santiago"), ("Russia", "Moscow"), ("Poland", "Warsaw"),
    ("Greece", "Athens"), ("Turkey", "Ankara"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
    ("Hungary", "Budapest"), ("Australia", "Canberra"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Iran", "Tehran"),
    ("Cuba", "Havana"), ("Colombia", "Bogota"), ("Nigeria", "Abuja"),
    ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"),
    ("South Korea", "Seoul"), ("Belgium", "Brussels"),
    ("Morocco", "Rabat"), ("Saudi Arabia", "Riyadh"),
    ("New Zealand", "Wellington"), ("Iceland", "Reykjavik"),
    ("Nepal", "Kathmandu"), ("Ukraine", "Kyiv"),
]

# Each pair is asked in both directions; all are standard antonym pairs.
OPPOSITES = [
    ("hot", "cold"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
    ("day", "night"), ("wet", "dry"), ("full", "empty"), ("early", "late"),
    ("loud", "quiet"), ("rich", "poor"), ("clean", "dirty"),
    ("thick", "thin"), ("strong", "weak"), ("black", "white"),
    ("push", "pull"), ("buy", "sell"), ("first", "last"),
    ("top", "bottom"), ("inside", "outside"), ("above", "below"),
    ("yes", "no"), ("always", "never"), ("true", "false"),
    ("north", "south"), ("east", "west"), ("summer", "winter"),
    ("boy", "girl"), ("king", "queen"), ("big", "small"), ("open", "closed"),
    ("before", "after"), ("asleep", "awake"), ("cheap", "expensive"),
    ("near", "far"), ("come", "go"), ("remember", "forget"),
    ("give", "take"), ("win", "lose"), ("question", "answer"),
    ("start", "finish"),
]

PLURALS = [
    ("cat", "cats"), ("dog", "dogs"), ("book", "books"), ("apple", "apples"),
    ("car", "cars"), ("tree", "trees"), ("bird", "birds"), ("cup", "cups"),
    ("house", "houses"), ("toy", "toys"), ("key", "keys"), ("day", "days"),
    ("box", "boxes"), ("fox", "foxes"), ("bus", "buses"),
    ("church", "churches"), ("dish", "dishes"), ("glass", "glasses"),
    ("watch", "watches"), ("baby", "babies"), ("city", "cities"),
    ("party", "parties"), ("story", "stories"), ("lady", "ladies"),
    ("knife", "knives"), ("leaf", "leaves"), ("wolf", "wolves"),
    ("half", "halves"), ("potato", "potatoes"), ("tomato", "tomatoes"),
    ("hero", "heroes"), ("child", "children"), ("mouse", "mice"),
    ("foot", "feet"), ("tooth", "teeth"), ("man", "men"),
    ("woman", "women"), ("person", "people"), ("goose", "geese"),
    ("sheep", "sheep"), ("ox", "oxen"),
]

# (animal, verb for its sound)
ANIMAL_SOUNDS = [
    ("dog", "barks"), ("cat", "meows"), ("cow", "moos"), ("duck", "quacks"),
    ("sheep", "baas"), ("pig", "oinks"), ("horse", "neighs"),
    ("lion", "roars"), ("owl", "hoots"), ("snake", "hisses"),
    ("bee", "buzzes"), ("frog", "croaks"), ("mouse", "squeaks"),
    ("wolf", "howls"), ("donkey", "brays"), ("goat", "bleats"),
]

ANIMAL_LEGS = [
    ("dog", 4), ("cat", 4), ("cow", 4), ("horse", 4), ("lion", 4),
    ("elephant", 4), ("mouse", 4), ("frog", 4), ("spider", 8), ("ant", 6),
    ("bee", 6), ("beetle", 6), ("butterfly", 6), ("chicken", 2),
    ("duck", 2), ("owl", 2), ("penguin", 2), ("ostrich", 2), ("snake", 0),
]

# (subject, verb "is"/"are", color)
COLORS = [
    ("snow", "is", "white"), ("grass", "is", "green"),
    ("a clear sky", "is", "blue"), ("a ripe banana", "is", "yellow"),
    ("coal", "is", "black"), ("a lemon", "is", "yellow"),
    ("a ripe strawberry", "is", "red"), ("a carrot", "is", "orange"),
    ("milk", "is", "white"), ("a pumpkin", "is", "orange"),
    ("a ripe tomato", "is", "red"), ("a crow", "is", "black"),
    ("chocolate", "is", "brown"), ("a cherry", "is", "red"),
    ("a cucumber", "is", "green"), ("salt", "is", "white"),
    ("a lime", "is", "green"), ("a flamingo", "is", "pink"),
    ("a polar bear", "is", "white"), ("an eggplant", "is", "purple"),
    ("ripe bananas", "are", "yellow"), ("fresh leaves", "are", "green"),
    ("carrots", "are", "orange"), ("ripe strawberries", "are", "red"),
]

# Past tense: (base, third person singular, past, [objects])
VERBS = [
    ("walk", "walks", "walked", ["to school", "in the park", "to the river"]),
    ("eat", "eats", "ate", ["an apple", "bread", "a sandwich"]),
    ("go", "goes", "went", ["to the market", "to bed early", "home"]),
    ("play", "plays", "played", ["football", "with the cat", "the piano"]),
    ("see", "sees", "saw", ["a bird", "the sea", "a red car"]),
    ("write", "writes", "wrote", ["a letter", "a short poem", "a list"]),
    ("drink", "drinks", "drank", ["water", "milk", "a cup of tea"]),
    ("run", "runs", "ran", ["to the shop", "in the park", "very fast"]),
    ("sing", "sings", "sang", ["a song", "in the choir", "very loudly"]),
    ("buy", "buys", "bought", ["some eggs", "a new hat", "fresh bread"]),
    ("cook", "cooks", "cooked", ["dinner", "rice", "soup"]),
    ("open", "opens", "opened", ["the door", "the window", "a box"]),
    ("watch", "watches", "watched", ["a film", "the birds", "the game"]),
    ("make", "makes", "made", ["a cake", "tea", "a paper boat"]),
    ("take", "takes", "took", ["the bus", "a photo", "the train"]),
    ("clean", "cleans", "cleaned", ["the kitchen", "the car", "the room"]),
    ("find", "finds", "found", ["a coin", "the key", "a small shell"]),
]
# (subject, uses third person singular form)
SUBJECTS = [
    ("I", False), ("We", False), ("They", False), ("You", False),
    ("Tom", True), ("Anna", True), ("My sister", True), ("Our teacher", True),
    ("The children", False), ("My friends", False),
]

# Made-up names and places for extractive QA.
NAMES = [
    "Mara", "Tomas", "Elin", "Bram", "Kira", "Oren", "Lila", "Nessa",
    "Pim", "Talo", "Rina", "Juno", "Veda", "Ilan", "Soren", "Ada",
    "Felo", "Zina", "Corin", "Dela",
]
PLACES = [
    "Lindon", "Ostrel", "Varnby", "Pellin", "Dunmere", "Quillby", "Tessaro",
    "Korvik", "Aldmoor", "Bexa", "Rundle", "Saltmere", "Emberly", "Glenvar",
    "Morrow Bay", "Elmfield",
]
JOBS = [
    "baker", "teacher", "doctor", "farmer", "nurse", "painter", "driver",
    "cook", "pilot", "builder", "singer", "writer", "engineer", "artist",
    "tailor", "gardener",
]
PETS = ["dog", "cat", "rabbit", "parrot", "horse", "goat", "hamster"]
PET_NAMES = ["Pip", "Bolt", "Moss", "Nib", "Toffee", "Rufus", "Sky", "Bean"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
        "Saturday", "Sunday"]
VEHICLES = ["bus", "train", "boat", "bike", "car"]
FRUITS = ["apples", "pears", "plums", "grapes", "mangoes", "cherries"]
COLOR_WORDS = ["red", "blue", "green", "yellow", "purple", "orange"]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def cap(text: str) -> str:
    return text[0].upper() + text[1:]


def sample(category, prompt, answer, short, fact, instruction=None,
           inp=None, question=None):
    """One example.

    prompt: full user message. answer: assistant reply (chat style).
    short: bare answer, used for prompt/completion. fact: a declarative
    sentence (or sentences) stating the same fact, used for plain text.
    instruction/inp: optional alpaca split with a non-empty input.
    question: prompt body for prompt/completion (defaults to prompt).
    """
    return {
        "category": category,
        "prompt": prompt,
        "answer": answer,
        "short": short,
        "fact": fact,
        "instruction": instruction,
        "input": inp,
        "question": question or prompt,
    }


# --------------------------------------------------------------------------
# Category generators
# --------------------------------------------------------------------------

CAPITAL_TEMPLATES = [
    "What is the capital of {c}?",
    "Name the capital city of {c}.",
    "Which city is the capital of {c}?",
    "Tell me the capital of {c}.",
    "What city is the capital of {c}?",
    "Can you tell me the capital of {c}?",
    "The capital of {c} is which city?",
    "What is the capital city of {c}?",
    "Do you know the capital of {c}?",
]
CAPITAL_ALPACA = [
    "Name the capital city of the given country.",
    "What is the capital of this country?",
    "Give the capital of the country below.",
]


def gen_capital(rng):
    c, city = rng.choice(CAPITALS)
    prompt = rng.choice(CAPITAL_TEMPLATES).format(c=c)
    fact = f"The capital of {c} is {city}."
    return sample("capital", prompt, fact, city, fact,
                  rng.choice(CAPITAL_ALPACA), c)


OPPOSITE_TEMPLATES = [
    "What is the opposite of {w}?",
    "Give the opposite of the word \"{w}\".",
    "Name a word that means the opposite of {w}.",
    "What word is the opposite of {w}?",
    "Tell me the opposite of {w}.",
    "Which word means the opposite of \"{w}\"?",
    "What is the antonym of {w}?",
    "What is the opposite of the word \"{w}\"?",
    "Say the opposite of {w}.",
]
OPPOSITE_ALPACA = [
    "Give the opposite of the word.",
    "Write the opposite of this word.",
    "What is the antonym of the given word?",
]


def gen_opposite(rng):
    a, b = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    prompt = rng.choice(OPPOSITE_TEMPLATES).format(w=a)
    fact = f"The opposite of {a} is {b}."
    return sample("opposite", prompt, fact, b, fact,
                  rng.choice(OPPOSITE_ALPACA), a)


# (prompt template, answer template); {r} is the result.
ADD_TEMPLATES = [
    ("What is {a} plus {b}?", "{a} plus {b} is {r}."),
    ("What is {a} + {b}?", "{a} + {b} = {r}."),
    ("Add {a} and {b}.", "{a} plus {b} is {r}."),
    ("Calculate {a} + {b}.", "{a} + {b} = {r}."),
    ("What do you get when you add {a} and {b}?", "{a} plus {b} is {r}."),
    ("What is the sum of {a} and {b}?", "The sum of {a} and {b} is {r}."),
    ("How much is {a} plus {b}?", "{a} plus {b} is {r}."),
    ("If you have {a} apples and get {b} more, how many apples do you have?",
     "You have {r} apples."),
    ("Work out {a} + {b}.", "{a} + {b} = {r}."),
]
SUB_TEMPLATES = [
    ("What is {a} minus {b}?", "{a} minus {b} is {r}."),
    ("What is {a} - {b}?", "{a} - {b} = {r}."),
    ("Subtract {b} from {a}.", "{a} minus {b} is {r}."),
    ("Calculate {a} - {b}.", "{a} - {b} = {r}."),
    ("What do you get when you take {b} away from {a}?",
     "{a} minus {b} is {r}."),
    ("What is the difference between {a} and {b}?",
     "The difference between {a} and {b} is {r}."),
    ("How much is {a} minus {b}?", "{a} minus {b} is {r}."),
    ("If you have {a} apples and eat {b}, how many apples are left?",
     "You have {r} apples left."),
    ("Work out {a} - {b}.", "{a} - {b} = {r}."),
]


def gen_arith(rng):
    if rng.random() < 0.5:
        # every number, including the result, stays under 20
        a = rng.randint(0, 19)
        b = rng.randint(0, 19 - a)
        r = a + b
        tpl, ans = rng.choice(ADD_TEMPLATES)
        fact = f"{a} plus {b} is {r}."
    else:
        a = rng.randint(1, 19)
        b = rng.randint(0, a)
        r = a - b
        tpl, ans = rng.choice(SUB_TEMPLATES)
        fact = f"{a} minus {b} is {r}."
    if "apples" in tpl and (a < 2 or b < 1 or r < 2):
        # keep the word problems grammatical ("1 apples") and sensible
        return gen_arith(rng)
    prompt = tpl.format(a=a, b=b)
    answer = ans.format(a=a, b=b, r=r)
    return sample("arithmetic", prompt, answer, str(r), fact)


PLURAL_TEMPLATES = [
    "What is the plural of {w}?",
    "Give the plural form of \"{w}\".",
    "What is the plural form of the word {w}?",
    "Write the plural of {w}.",
    "Tell me the plural of the noun {w}.",
    "If there is more than one {w}, what do you call them?",
    "How do you say more than one {w}?",
    "What is the plural of the word \"{w}\"?",
    "Make the word {w} plural.",
]
PLURAL_ALPACA = [
    "Write the plural form of the noun.",
    "Give the plural of this word.",
    "Make this word plural.",
]


def gen_plural(rng):
    w, p = rng.choice(PLURALS)
    prompt = rng.choice(PLURAL_TEMPLATES).format(w=w)
    fact = f"The plural of {w} is {p}."
    return sample("plural", prompt, fact, p, fact,
                  rng.choice(PLURAL_ALPACA), w)


QA_TEMPLATES = [
    "{ctx} Question: {q}",
    "Context: {ctx}\nQuestion: {q}",
    "Read this: {ctx} {q}",
    "{ctx}\n\n{q}",
    "Read the text and answer the question.\nText: {ctx}\nQuestion: {q}",
    "Here is a short text: {ctx} Answer this: {q}",
    "{q} Use this text: {ctx}",
    "Answer using the passage. Passage: {ctx} Question: {q}",
    "Text: {ctx}\n{q}",
]
QA_ALPACA = [
    "Answer the question using the text. {q}",
    "Read the text and answer: {q}",
    "{q}",
]


QA_KINDS = 6
QA_ONE_SENTENCE_KINDS = [0, 3, 4]  # contexts that are a single sentence


def qa_context(rng, n=None, kind=None):
    """Return (context, [(question, answer), ...]) about the person ``n``."""
    n = n or rng.choice(NAMES)
    kind = rng.randrange(QA_KINDS) if kind is None else kind
    if kind == 0:
        p, j = rng.choice(PLACES), rng.choice(JOBS)
        ctx = f"{n} lives in {p} and works as {article(j)}."
        qas = [(f"Where does {n} live?", p),
               (f"What is {n}'s job?", cap(article(j)))]
    elif kind == 1:
        p1, p2 = rng.sample(PLACES, 2)
        ctx = f"{n} was born in {p1}. Now {n} lives in {p2}."
        qas = [(f"Where was {n} born?", p1),
               (f"Where does {n} live now?", p2)]
    elif kind == 2:
        pet, pn, age = rng.choice(PETS), rng.choice(PET_NAMES), rng.randint(2, 9)
        ctx = f"{n} has {article(pet)} called {pn}. The {pet} is {age} years old."
        qas = [(f"What is the name of {n}'s {pet}?", pn),
               (f"How old is {n}'s {pet}?", f"{age} years old"),
               (f"What animal does {n} have?", cap(article(pet)))]
    elif kind == 3:
        k, m = rng.randint(2, 5), rng.randint(2, 5)
        ctx = f"{n} has {k} brothers and {m} sisters."
        qas = [(f"How many brothers does {n} have?", str(k)),
               (f"How many sisters does {n} have?", str(m))]
    elif kind == 4:
        v, p, d = rng.choice(VEHICLES), rng.choice(PLACES), rng.choice(DAYS)
        ctx = f"On {d}, {n} took the {v} to {p}."
        qas = [(f"Where did {n} go?", p),
               (f"On what day did {n} travel?", d),
               (f"How did {n} travel to {p}?", f"By {v}")]
    else:
        f, c = rng.choice(FRUITS), rng.choice(COLOR_WORDS)
        ctx = f"{n} likes {f} more than any other fruit. {n}'s favorite color is {c}."
        qas = [(f"Which fruit does {n} like most?", cap(f)),
               (f"What is {n}'s favorite color?", cap(c))]
    return ctx, qas


def gen_qa(rng):
    ctx, qas = qa_context(rng)
    q, a = rng.choice(qas)
    prompt = rng.choice(QA_TEMPLATES).format(ctx=ctx, q=q)
    return sample("extractive_qa", prompt, a, a, ctx,
                  rng.choice(QA_ALPACA).format(q=q), ctx,
                  question=f"Context: {ctx}\nQuestion: {q}")


SOUND_TEMPLATES = [
    "What sound does {a} make?",
    "What noise does {a} make?",
    "What does {a} say?",
    "Which sound comes from {a}?",
    "Tell me the sound that {a} makes.",
    "How does {a} sound?",
    "What sound do you hear from {a}?",
    "What kind of sound does {a} make?",
]
LEG_TEMPLATES = [
    "How many legs does {a} have?",
    "Count the legs of {a}.",
    "How many legs has {a} got?",
    "Tell me how many legs {a} has.",
    "What is the number of legs on {a}?",
    "{A} has how many legs?",
    "How many legs are on {a}?",
    "Do you know how many legs {a} has?",
]


def gen_animal(rng):
    if rng.random() < 0.5:
        animal, verb = rng.choice(ANIMAL_SOUNDS)
        a = article(animal)
        prompt = rng.choice(SOUND_TEMPLATES).format(a=a, A=cap(a))
        fact = f"{cap(a)} {verb}."
        return sample("animal", prompt, fact, fact, fact, "What sound does this animal make?", animal)
    animal, n = rng.choice(ANIMAL_LEGS)
    a = article(animal)
    prompt = rng.choice(LEG_TEMPLATES).format(a=a, A=cap(a))
    if n == 0:
        fact = f"{cap(a)} has no legs."
    else:
        fact = f"{cap(a)} has {n} legs."
    return sample("animal", prompt, fact, str(n), fact,
                  "How many legs does this animal have?", animal)


COLOR_TEMPLATES = [
    "What color {be} {s}?",
    "What is the color of {s}?",
    "Tell me the color of {s}.",
    "Which color {be} {s}?",
    "Name the color of {s}.",
    "What color {be} {s} usually?",
    "Can you tell me what color {s} {be}?",
    "What is the usual color of {s}?",
]


def gen_color(rng):
    s, be, c = rng.choice(COLORS)
    prompt = rng.choice(COLOR_TEMPLATES).format(s=s, be=be)
    fact = f"{cap(s)} {be} {c}."
    return sample("color", prompt, fact, c, fact,
                  "What color is this?", s)


PAST_TEMPLATES = [
    "Rewrite this sentence in the past tense: {s}",
    "Change the sentence to the past tense: {s}",
    "Put this sentence in the past tense: {s}",
    "Write this sentence in the past: {s}",
    "Make this sentence past tense: {s}",
    "Turn this into the past tense: {s}",
    "How would you say this in the past tense? {s}",
    "Convert to past tense: {s}",
]
PAST_ALPACA = [
    "Rewrite the sentence in the past tense.",
    "Change this sentence to the past tense.",
    "Put the sentence in the past tense.",
]


def gen_past(rng):
    subj, third = rng.choice(SUBJECTS)
    base, s3, past, objs = rng.choice(VERBS)
    obj = rng.choice(objs)
    present = f"{subj} {s3 if third else base} {obj}."
    past_s = f"{subj} {past} {obj}."
    prompt = rng.choice(PAST_TEMPLATES).format(s=present)
    fact = f"The past tense of {base} is {past}."
    return sample("past_tense", prompt, past_s, past_s, fact,
                  rng.choice(PAST_ALPACA), present,
                  question=f"Rewrite in the past tense: {present}")


GENERATORS = [gen_capital, gen_opposite, gen_arith, gen_plural, gen_qa,
              gen_animal, gen_color, gen_past]


def draw(rng, seen=None, fn=None):
    """Draw one sample, avoiding prompts already in ``seen``."""
    for _ in range(200):
        s = (fn or rng.choice(GENERATORS))(rng)
        if seen is None or s["prompt"] not in seen:
            if seen is not None:
                seen.add(s["prompt"])
            return s
    raise RuntimeError("could not draw a new sample")


# --------------------------------------------------------------------------
# File builders
# --------------------------------------------------------------------------

def build_chat(rng):
    rows = []
    seen = set()
    with_system = set(rng.sample(range(N_CHAT), round(N_CHAT * 0.15)))
    multi_turn = set(rng.sample(range(N_CHAT), round(N_CHAT * 0.15)))
    for i in range(N_CHAT):
        msgs = []
        if i in with_system:
            msgs.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        turns = 2 if i in multi_turn else 1
        for _ in range(turns):
            s = draw(rng, seen)
            msgs.append({"role": "user", "content": s["prompt"]})
            msgs.append({"role": "assistant", "content": s["answer"]})
        rows.append({"messages": msgs})
    return rows


def build_alpaca(rng):
    rows = []
    seen = set()
    seen_pairs = set()  # (instruction, input): short instructions repeat
    with_input = set(rng.sample(range(N_ALPACA), N_ALPACA // 2))
    for i in range(N_ALPACA):
        if i in with_input:
            while True:
                s = draw(rng, seen)
                key = (s["instruction"], s["input"])
                if s["input"] and key not in seen_pairs:
                    seen_pairs.add(key)
                    break
            rows.append({"instruction": s["instruction"], "input": s["input"],
                         "output": s["answer"]})
        else:
            s = draw(rng, seen)
            rows.append({"instruction": s["prompt"], "input": "",
                         "output": s["answer"]})
    return rows


def build_sharegpt(rng):
    rows = []
    seen = set()
    for _ in range(N_SHAREGPT):
        conv = []
        if rng.random() < 0.2:
            conv.append({"from": "system", "value": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(2 if rng.random() < 0.15 else 1):
            s = draw(rng, seen)
            conv.append({"from": "human", "value": s["prompt"]})
            conv.append({"from": "gpt", "value": s["answer"]})
        rows.append({"conversations": conv})
    return rows


def build_prompt_completion(rng):
    rows = []
    seen = set()
    for _ in range(N_PROMPT_COMPLETION):
        s = draw(rng, seen)
        q = s["question"]
        if "\nQuestion:" in q:  # extractive QA already has a Question: line
            prompt = q + "\nAnswer:"
        else:
            prompt = f"Question: {q}\nAnswer:"
        rows.append({"prompt": prompt, "completion": " " + s["short"]})
    return rows


def build_text(rng):
    rows = []
    seen_facts = set()
    while len(rows) < N_TEXT:
        fn = rng.choice(GENERATORS)
        if fn is gen_qa:
            # two-sentence contexts stand alone; single-sentence ones get a
            # second single-sentence fact about the same person
            name = rng.choice(NAMES)
            kind = rng.randrange(QA_KINDS)
            para, _ = qa_context(rng, name, kind)
            if kind in QA_ONE_SENTENCE_KINDS:
                other = rng.choice([k for k in QA_ONE_SENTENCE_KINDS if k != kind])
                para += " " + qa_context(rng, name, other)[0]
        else:
            k = rng.choice([2, 3])
            facts = []
            tries = 0
            while len(facts) < k and tries < 50:
                tries += 1
                f = fn(rng)["fact"]
                if f not in facts:
                    facts.append(f)
            para = " ".join(facts)
        if para in seen_facts:
            continue
        seen_facts.add(para)
        rows.append({"text": para})
    return rows


# --------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------

def write_jsonl(path, rows):
    with open(path, "w", encoding="ascii", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=True) + "\n")


def write_json(path, rows):
    with open(path, "w", encoding="ascii", newline="\n") as f:
        json.dump(rows, f, ensure_ascii=True, indent=2)
        f.write("\n")


def write_csv(path, rows):
    with open(path, "w", encoding="ascii", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "completion"],
                           lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def write_parquet(path, rows):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        print("warning: pyarrow not installed, skipping " + path, file=sys.stderr)
        return False
    table = pa.table({"text": [r["text"] for r in rows]})
    pq.write_table(table, path)
    return True


def main():
    rng = random.Random(SEED)
    chat = build_chat(rng)
    alpaca = build_alpaca(rng)
    sharegpt = build_sharegpt(rng)
    pc = build_prompt_completion(rng)
    text = build_text(rng)

    out = lambda name: os.path.join(OUT_DIR, name)  # noqa: E731
    write_jsonl(out("tiny_chat.jsonl"), chat)
    write_json(out("tiny_alpaca.json"), alpaca)
    write_jsonl(out("tiny_sharegpt.jsonl"), sharegpt)
    write_csv(out("tiny_prompt_completion.csv"), pc)
    wrote_parquet = write_parquet(out("tiny_text.parquet"), text)
    for name, rows in [("tiny_chat.jsonl", chat), ("tiny_alpaca.json", alpaca),
                       ("tiny_sharegpt.jsonl", sharegpt),
                       ("tiny_prompt_completion.csv", pc),
                       ("tiny_text.parquet", text)]:
        if name.endswith(".parquet") and not wrote_parquet:
            print(f"{name:<28} skipped (needs pyarrow)")
            continue
        print(f"{name:<28} {len(rows):>4} rows")


if __name__ == "__main__":
    main()
