#!/usr/bin/env python
"""Generate the tiny synthetic instruction-tuning and preference datasets in
recipes/data/.

The data is written by this project (not scraped or derived from any other
dataset) and is released under the project licence (Apache-2.0). It is meant
for smoke tests and demos that SFT tiny, randomly initialised models for a few
dozen steps, so it is short, regular, plain ASCII English, and every answer is
correct by construction. The preference files (tiny_prefs*.jsonl) pair each
correct answer with a wrong one of the same style for reward modelling and
DPO, and tiny_prompts.jsonl holds prompts only, for online RL (PPO, RLOO).

Run from the repository root:

    python recipes/data/make_tiny_data.py

Output is deterministic: the SFT files are seeded with ``random.Random(0)``
and the preference files with their own ``random.Random(1)``, so changing the
preference data never changes the SFT files. Everything except
the Parquet file uses only the standard library; ``tiny_text.parquet`` needs
``pyarrow`` (already a dependency of ``datasets``). If pyarrow is missing,
the other files are still written and a warning is printed.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import random
import re
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
# Preference data (reward modelling, DPO, online RL prompts)
# --------------------------------------------------------------------------
#
# These files use their own random stream (PREF_SEED), so adding or changing
# them never changes the bytes of the SFT files above. Every "chosen" answer
# is correct by construction. Every "rejected" answer has the same style and
# about the same length, and is wrong by construction: the wrong capital, a
# wrong number, a word that is not the opposite, a wrong plural, the wrong
# sound or color, a sentence that is not in the past tense, or (for
# extractive QA) a span from the context that does not answer the question or
# an entity that is not in the context at all.
#
# Length bias: a reward model must not learn "longer is better", so each
# builder picks the rejected answer so that it is longer than the chosen one
# in about half the rows and shorter (or, rarely, equal) in the rest.

PREF_SEED = 1

N_PREFS = 240
N_PREFS_QA = 96            # 40% extractive QA
N_PREFS_TEXT = 40
N_PREFS_TEXT_QA = 16
N_PREFS_HH = 40
N_PREFS_HH_TWO_TURN = 10
N_PREFS_HH_QA = 16
N_PREFS_IMPLICIT = 40
N_PREFS_IMPLICIT_QA = 16
N_PROMPTS = 120
N_PROMPTS_QA = 48

# Target share of rows where the rejected answer is longer / shorter / the
# same length as the chosen one (in characters).
LENGTH_MIX = (("longer", 0.47), ("shorter", 0.47), ("equal", 0.06))

# Well-known cities that are NOT the capital (bigger cities, former
# capitals). Used as hard negatives next to other countries' capitals.
CAPITAL_MISTAKES = {
    "Australia": ["Sydney", "Melbourne"],
    "Canada": ["Toronto", "Montreal", "Vancouver"],
    "Turkey": ["Istanbul"],
    "Brazil": ["Rio de Janeiro", "Sao Paulo"],
    "Nigeria": ["Lagos"],
    "Morocco": ["Casablanca", "Marrakesh"],
    "New Zealand": ["Auckland"],
    "India": ["Mumbai"],
    "China": ["Shanghai"],
    "Vietnam": ["Ho Chi Minh City"],
    "Saudi Arabia": ["Jeddah"],
    "Italy": ["Milan"],
    "Spain": ["Barcelona"],
    "Russia": ["Saint Petersburg"],
    "Japan": ["Osaka", "Kyoto"],
    "Poland": ["Krakow"],
    "Germany": ["Munich", "Hamburg"],
    "Ireland": ["Cork"],
    "South Korea": ["Busan"],
    "Egypt": ["Alexandria"],
    "Kenya": ["Mombasa"],
    "Peru": ["Cusco"],
    "Argentina": ["Cordoba"],
    "Colombia": ["Medellin"],
    "Greece": ["Thessaloniki"],
    "Norway": ["Bergen"],
    "Sweden": ["Gothenburg"],
    "Denmark": ["Aarhus"],
    "Austria": ["Salzburg"],
    "Thailand": ["Chiang Mai"],
    "Iran": ["Isfahan"],
    "Ghana": ["Kumasi"],
    "Belgium": ["Antwerp"],
    "Ukraine": ["Kharkiv", "Odesa"],
    "Portugal": ["Porto"],
    "France": ["Lyon", "Marseille"],
    "Mexico": ["Guadalajara"],
    "Nepal": ["Pokhara"],
}

# Words that are related in meaning. A wrong "opposite" is never taken from
# a group that holds the asked word or its real opposite, so it is clearly
# not an antonym (no "the opposite of happy is down").
OPPOSITE_CONFUSABLE = [
    {"hot", "cold", "summer", "winter", "wet", "dry"},
    {"up", "down", "top", "bottom", "above", "below", "north", "south",
     "east", "west", "inside", "outside", "near", "far"},
    {"happy", "sad", "up", "down"},
    {"day", "night", "black", "white", "clean", "dirty", "early", "late"},
    {"early", "late", "before", "after", "first", "last", "start", "finish",
     "fast", "slow", "win", "lose", "always", "never"},
    {"full", "empty", "thick", "thin", "strong", "weak", "big", "small",
     "rich", "poor", "cheap", "expensive"},
    {"buy", "sell", "give", "take", "win", "lose", "rich", "poor", "cheap",
     "expensive", "come", "go", "push", "pull", "open", "closed"},
    {"yes", "no", "true", "false", "always", "never", "question", "answer"},
    {"loud", "quiet", "asleep", "awake"},
    {"boy", "girl", "king", "queen"},
    {"remember", "forget", "asleep", "awake"},
    {"inside", "outside", "open", "closed", "come", "go", "near", "far"},
]

# Wrong plurals: the unchanged singular or a wrongly applied rule. None of
# them is an accepted plural of the noun.
PLURAL_WRONG = {
    "cat": ["cat", "cates"], "dog": ["dog", "dogges"],
    "book": ["book", "beek"], "apple": ["apple", "applen"],
    "car": ["car", "carren"], "tree": ["tree", "treen"],
    "bird": ["bird", "birdes"], "cup": ["cup", "cuppes"],
    "house": ["house", "hice"], "toy": ["toy", "toies"],
    "key": ["key", "keies"], "day": ["day", "daies"],
    "box": ["box", "boxs"], "fox": ["fox", "foxs"],
    "bus": ["bus", "bussen"], "church": ["church", "churchs"],
    "dish": ["dish", "dishs"], "glass": ["glass", "glassen"],
    "watch": ["watch", "watchs"], "baby": ["babys", "babyes"],
    "city": ["citys", "cityes"], "party": ["partys", "partyes"],
    "story": ["storys", "storyes"], "lady": ["ladys", "ladyes"],
    "knife": ["knifes", "knifs"], "leaf": ["leafs", "leafes"],
    "wolf": ["wolfs", "wolfes"], "half": ["halfs", "halfes"],
    "potato": ["potato", "potatos"], "tomato": ["tomato", "tomatos"],
    "hero": ["hero", "heroies"], "child": ["childs", "childrens"],
    "mouse": ["mices", "meese"], "foot": ["foots", "feets"],
    "tooth": ["tooths", "teeths"], "man": ["mans", "mens"],
    "woman": ["womans", "womens"], "person": ["person", "persones"],
    "goose": ["gooses", "geeses"], "sheep": ["sheeps", "sheepes"],
    "ox": ["oxs", "oxens"],
}

# Sounds that are NOT wrong for an animal although they belong to another
# one in ANIMAL_SOUNDS (a dog also howls, a goat also baas, ...).
SOUND_ALSO_RIGHT = {
    "dog": {"howls"}, "wolf": {"barks"}, "cat": {"hisses", "howls"},
    "sheep": {"bleats"}, "goat": {"baas"}, "owl": {"hisses", "squeaks"},
    "pig": {"squeaks"}, "horse": {"brays"}, "donkey": {"neighs"},
    "cow": {"bleats"}, "lion": {"hisses"}, "duck": {"hisses"},
    "frog": {"barks", "squeaks"},
}

# Clearly wrong colors (no real variety or ripeness stage has them).
COLOR_WRONG = {
    "snow": ["green", "red", "black"],
    "grass": ["red", "purple", "pink"],
    "a clear sky": ["green", "brown"],
    "a ripe banana": ["blue", "pink"],
    "coal": ["white", "yellow", "green"],
    "a lemon": ["blue", "red", "purple"],
    "a ripe strawberry": ["blue", "green"],
    "a carrot": ["blue", "green"],
    "milk": ["green", "black", "red"],
    "a pumpkin": ["purple", "pink"],
    "a ripe tomato": ["blue"],
    "a crow": ["green", "yellow", "pink"],
    "chocolate": ["green", "blue"],
    "a cherry": ["blue"],
    "a cucumber": ["red", "blue"],
    "salt": ["green"],
    "a lime": ["red", "blue", "purple"],
    "a flamingo": ["green", "blue"],
    "a polar bear": ["brown", "green"],
    "an eggplant": ["blue"],
    "ripe bananas": ["blue", "pink"],
    "fresh leaves": ["blue", "black"],
    "carrots": ["blue", "green"],
    "ripe strawberries": ["blue", "green"],
}

# Over-regularised past tenses of the irregular verbs in VERBS.
WRONG_PAST = {
    "eat": "eated", "go": "goed", "see": "seed", "write": "writed",
    "drink": "drinked", "run": "runned", "sing": "singed", "buy": "buyed",
    "make": "maked", "take": "taked", "find": "finded",
}

PREF_QA_TEMPLATES = [
    "Context: {ctx}\nQuestion: {q}",
    "Context: {ctx}\nQuestion: {q}",
    "Context: {ctx} Question: {q}",
    "Read the context and answer the question.\nContext: {ctx}\nQuestion: {q}",
    "Answer using only the context.\nContext: {ctx}\nQuestion: {q}",
]

# Answer type of each question that qa_context() returns, by kind.
QA_TYPES = [
    ["place", "job"],
    ["place", "place"],
    ["pet_name", "age", "pet"],
    ["count", "count"],
    ["place", "day", "vehicle"],
    ["fruit", "color"],
]


def qa_type_values(qtype):
    """All answers of one type, written as qa_context() writes them."""
    if qtype == "place":
        return list(PLACES)
    if qtype == "job":
        return [cap(article(j)) for j in JOBS]
    if qtype == "pet_name":
        return list(PET_NAMES)
    if qtype == "age":
        return [f"{x} years old" for x in range(2, 13)]
    if qtype == "pet":
        return [cap(article(p)) for p in PETS]
    if qtype == "count":
        return [str(x) for x in range(1, 13)]
    if qtype == "day":
        return list(DAYS)
    if qtype == "vehicle":
        return [f"By {v}" for v in VEHICLES]
    if qtype == "fruit":
        return [cap(f) for f in FRUITS]
    return [cap(c) for c in COLOR_WORDS]


def core_word(answer):
    """The word(s) of an answer that would appear in the context."""
    for prefix in ("A ", "An ", "By "):
        if answer.startswith(prefix):
            return answer[len(prefix):]
    return answer


def in_text(answer, text):
    pattern = r"\b" + re.escape(core_word(answer)) + r"\b"
    return re.search(pattern, text, re.IGNORECASE) is not None


def pref(category, key, prompt, question, chosen, chosen_short, wrongs):
    """One preference example.

    chosen/chosen_short: the correct answer, chat style and bare.
    wrongs: candidate wrong answers, dicts with "long", "short" and
    "in_ctx" (a span copied from the context, for extractive QA).
    """
    wrongs = [w for w in wrongs
              if w["long"] != chosen and w["short"] != chosen_short]
    assert wrongs, (category, prompt)
    return {"category": category, "key": key, "prompt": prompt,
            "question": question, "chosen": chosen,
            "chosen_short": chosen_short, "wrongs": wrongs}


def wrong(long, short=None, in_ctx=False):
    return {"long": long, "short": long if short is None else short,
            "in_ctx": in_ctx}


def pref_capital(rng):
    c, city = rng.choice(CAPITALS)
    prompt = rng.choice(CAPITAL_TEMPLATES).format(c=c)
    fact = f"The capital of {c} is {city}."
    others = [x for _, x in CAPITALS if x != city]
    cities = CAPITAL_MISTAKES.get(c, []) + rng.sample(others, 4)
    return pref("capital", ("capital", c), prompt, prompt, fact, city,
                [wrong(f"The capital of {c} is {w}.", w) for w in cities])


def pref_opposite(rng):
    a, b = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    prompt = rng.choice(OPPOSITE_TEMPLATES).format(w=a)
    banned = {a, b}
    for group in OPPOSITE_CONFUSABLE:
        if a in group or b in group:
            banned |= group
    pool = sorted(w for pair in OPPOSITES for w in pair if w not in banned)
    words = rng.sample(pool, 5) + [a]  # "the opposite of hot is hot"
    return pref("opposite", ("opposite", a), prompt, prompt,
                f"The opposite of {a} is {b}.", b,
                [wrong(f"The opposite of {a} is {w}.", w) for w in words])


def pref_arith(rng):
    while True:
        if rng.random() < 0.5:
            a = rng.randint(0, 19)
            b = rng.randint(0, 19 - a)
            r, other, op = a + b, a - b, "+"
            tpl, ans = rng.choice(ADD_TEMPLATES)
        else:
            a = rng.randint(1, 19)
            b = rng.randint(0, a)
            r, other, op = a - b, a + b, "-"
            tpl, ans = rng.choice(SUB_TEMPLATES)
        apples = "apples" in tpl
        if not (apples and (a < 2 or b < 1 or r < 2)):
            break
    # off by one or two, a slip in the tens digit, or the other operation
    values = {r - 2, r - 1, r + 1, r + 2, r + 10 if r < 10 else r - 10,
              other} - {r}
    values = sorted(v for v in values if v >= (2 if apples else 0))
    prompt = tpl.format(a=a, b=b)
    return pref("arithmetic", ("arithmetic", a, op, b), prompt, prompt,
                ans.format(a=a, b=b, r=r), str(r),
                [wrong(ans.format(a=a, b=b, r=v), str(v)) for v in values])


def pref_plural(rng):
    w, p = rng.choice(PLURALS)
    prompt = rng.choice(PLURAL_TEMPLATES).format(w=w)
    return pref("plural", ("plural", w), prompt, prompt,
                f"The plural of {w} is {p}.", p,
                [wrong(f"The plural of {w} is {x}.", x)
                 for x in PLURAL_WRONG[w]])


def pref_animal(rng):
    if rng.random() < 0.5:
        animal, verb = rng.choice(ANIMAL_SOUNDS)
        a = article(animal)
        prompt = rng.choice(SOUND_TEMPLATES).format(a=a, A=cap(a))
        also = SOUND_ALSO_RIGHT.get(animal, set())
        verbs = [v for _, v in ANIMAL_SOUNDS if v != verb and v not in also]
        fact = f"{cap(a)} {verb}."
        return pref("animal", ("sound", animal), prompt, prompt, fact, fact,
                    [wrong(f"{cap(a)} {v}.") for v in rng.sample(verbs, 5)])
    animal, n = rng.choice(ANIMAL_LEGS)
    a = article(animal)
    prompt = rng.choice(LEG_TEMPLATES).format(a=a, A=cap(a))

    def legs(k):
        return f"{cap(a)} has no legs." if k == 0 else f"{cap(a)} has {k} legs."

    return pref("animal", ("legs", animal), prompt, prompt, legs(n), str(n),
                [wrong(legs(k), str(k)) for k in (0, 2, 4, 6, 8) if k != n])


def pref_color(rng):
    s, be, c = rng.choice(COLORS)
    prompt = rng.choice(COLOR_TEMPLATES).format(s=s, be=be)
    return pref("color", ("color", s), prompt, prompt, f"{cap(s)} {be} {c}.",
                c, [wrong(f"{cap(s)} {be} {x}.", x) for x in COLOR_WRONG[s]])


def pref_past(rng):
    subj, third = rng.choice(SUBJECTS)
    base, s3, past, objs = rng.choice(VERBS)
    obj = rng.choice(objs)
    present = f"{subj} {s3 if third else base} {obj}."
    prompt = rng.choice(PAST_TEMPLATES).format(s=present)
    wrongs = [present, f"{subj} will {base} {obj}."]
    if base in WRONG_PAST:
        wrongs.append(f"{subj} {WRONG_PAST[base]} {obj}.")
    return pref("past_tense", ("past_tense", present), prompt,
                f"Rewrite in the past tense: {present}",
                f"{subj} {past} {obj}.", f"{subj} {past} {obj}.",
                [wrong(w) for w in wrongs])


def pref_qa(rng):
    """Extractive QA over one or two made-up people.

    Wrong answers are spans of the same type from the context that do not
    answer the question (the other person's town, the other number, the
    owner's name instead of the pet's) or entities that are not in the
    context at all (ungrounded).
    """
    kind = rng.randrange(QA_KINDS)
    if rng.random() < 0.35:
        n1 = rng.choice(NAMES)
        ctx, qas = qa_context(rng, n1, kind)
        i = rng.randrange(len(qas))
        q, a = qas[i]
        spans = [x for _, x in qas]
        names = [n1]
    else:
        n1, n2 = rng.sample(NAMES, 2)
        ctx1, qas1 = qa_context(rng, n1, kind)
        i = rng.randrange(len(qas1))
        q, a = qas1[i]
        while True:
            ctx2, qas2 = qa_context(rng, n2, kind)
            # the same question about the other person has another answer;
            # two pets are of different kinds, so "The dog is ..." is clear
            if qas2[i][1] != a and (kind != 2 or qas2[2][1] != qas1[2][1]):
                break
        ctx = f"{ctx1} {ctx2}" if rng.random() < 0.5 else f"{ctx2} {ctx1}"
        spans = [x for _, x in qas1 + qas2]
        names = [n1, n2]
    types = QA_TYPES[kind]
    qtype = types[i]
    span_types = types * (len(spans) // len(types))  # one or two people
    grounded = [x for x, t in zip(spans, span_types, strict=True)
                if t == qtype and x != a]
    if qtype == "pet_name":
        grounded += names  # the owner's name instead of the pet's
    ungrounded = [x for x in qa_type_values(qtype)
                  if x != a and not in_text(x, ctx)]
    wrongs = ([wrong(x, in_ctx=True) for x in dict.fromkeys(grounded)]
              + [wrong(x) for x in rng.sample(ungrounded, min(4, len(ungrounded)))])
    prompt = rng.choice(PREF_QA_TEMPLATES).format(ctx=ctx, q=q)
    return pref("extractive_qa", ("extractive_qa", ctx, q), prompt,
                f"Context: {ctx}\nQuestion: {q}", a, a, wrongs)


PREF_GENERATORS = [pref_capital, pref_opposite, pref_arith, pref_plural,
                   pref_animal, pref_color, pref_past]


def pref_schedule(rng, n, n_qa):
    """Generators for n rows: n_qa extractive QA, the rest spread evenly."""
    others = [PREF_GENERATORS[i % len(PREF_GENERATORS)] for i in range(n - n_qa)]
    order = [pref_qa] * n_qa + others
    rng.shuffle(order)
    return order


def draw_pref(rng, fn, seen, keys, fresh_tries=60):
    """Draw an example with a new prompt, preferring a new fact (key)."""
    for t in range(1000):
        p = fn(rng)
        if p["prompt"] in seen or (t < fresh_tries and p["key"] in keys):
            continue
        seen.add(p["prompt"])
        keys.add(p["key"])
        return p
    raise RuntimeError("could not draw a new preference example")


class LengthBalancer:
    """Chooses rejected answers so the rejected/chosen length mix follows
    LENGTH_MIX over a file and, as far as the candidates allow, within each
    kind of question (a reward model must not learn a length rule)."""

    def __init__(self):
        self.counts = collections.defaultdict(
            lambda: {k: 0 for k, _ in LENGTH_MIX})

    @staticmethod
    def relation(rejected, chosen):
        if len(rejected) > len(chosen):
            return "longer"
        return "shorter" if len(rejected) < len(chosen) else "equal"

    def pick(self, rng, p, field="long", prefer=None):
        """A wrong answer of p; prefer(chosen, wrong) picks among equals."""
        chosen = p["chosen"] if field == "long" else p["chosen_short"]
        groups = {}
        for w in p["wrongs"]:
            groups.setdefault(self.relation(w[field], chosen), []).append(w)
        # the available relation that is furthest below its target share
        # among the earlier questions of the same kind
        counts = self.counts[p["key"][0]]
        n = sum(counts.values())
        deficit = {k: share * (n + 1) - counts[k]
                   for k, share in LENGTH_MIX if k in groups}
        rel = max(deficit, key=lambda k: deficit[k])
        pool = groups[rel]
        if prefer is not None:
            pool = [w for w in pool if prefer(chosen, w[field])] or pool
        grounded = [w for w in pool if w["in_ctx"]]
        if grounded and rng.random() < 0.85:
            pool = grounded
        counts[rel] += 1
        return rng.choice(pool)[field]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def build_prefs(rng, seen, keys):
    bal = LengthBalancer()
    rows = []
    for fn in pref_schedule(rng, N_PREFS, N_PREFS_QA):
        p = draw_pref(rng, fn, seen, keys)
        rows.append({"prompt": [user(p["prompt"])],
                     "chosen": [assistant(p["chosen"])],
                     "rejected": [assistant(bal.pick(rng, p))]})
    return rows


def build_prefs_text(rng, seen):
    bal = LengthBalancer()
    keys = set()
    rows = []
    for fn in pref_schedule(rng, N_PREFS_TEXT, N_PREFS_TEXT_QA):
        p = draw_pref(rng, fn, seen, keys)
        q = p["question"]
        prompt = (q if "\nQuestion:" in q else f"Question: {q}") + "\nAnswer:"
        rows.append({"prompt": prompt,
                     "chosen": " " + p["chosen_short"],
                     "rejected": " " + bal.pick(rng, p, "short")})
    return rows


def word_boundary_diff(a, b):
    """True if a and b first differ at the start of a word."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i == 0 or a[i - 1] == " "


def build_prefs_hh(rng, seen):
    # Prefer wrong answers that differ from the chosen one from the start of
    # a word, so that extracting the shared prompt (the common prefix, as
    # TRL does for implicit-prompt text) does not cut a word in two.
    bal = LengthBalancer()
    keys = set()
    rows = []
    two_turn = set(rng.sample(range(N_PREFS_HH), N_PREFS_HH_TWO_TURN))
    for i, fn in enumerate(pref_schedule(rng, N_PREFS_HH, N_PREFS_HH_QA)):
        prefix = ""
        if i in two_turn:
            first = draw_pref(rng, rng.choice(PREF_GENERATORS + [pref_qa]),
                              seen, keys)
            prefix = f"\n\nHuman: {first['prompt']}\n\nAssistant: {first['chosen']}"
        p = draw_pref(rng, fn, seen, keys)
        prefix += f"\n\nHuman: {p['prompt']}\n\nAssistant: "
        rows.append({"chosen": prefix + p["chosen"],
                     "rejected": prefix + bal.pick(rng, p, "long",
                                                   word_boundary_diff)})
    return rows


def build_prefs_implicit(rng, seen):
    bal = LengthBalancer()
    keys = set()
    rows = []
    for fn in pref_schedule(rng, N_PREFS_IMPLICIT, N_PREFS_IMPLICIT_QA):
        p = draw_pref(rng, fn, seen, keys)
        rows.append({"chosen": [user(p["prompt"]), assistant(p["chosen"])],
                     "rejected": [user(p["prompt"]), assistant(bal.pick(rng, p))]})
    return rows


def build_prompts(rng, seen, pref_keys):
    """Prompts only, for online RL; new facts where possible."""
    keys = set(pref_keys)
    rows = []
    for fn in pref_schedule(rng, N_PROMPTS, N_PROMPTS_QA):
        p = draw_pref(rng, fn, seen, keys)
        rows.append({"prompt": [user(p["prompt"])]})
    return rows


def build_pref_files(rng):
    """All preference files, in a fixed order from one random stream."""
    seen = set()   # prompts are not repeated across the preference files
    pref_keys = set()
    prefs = build_prefs(rng, seen, pref_keys)
    text = build_prefs_text(rng, seen)
    hh = build_prefs_hh(rng, seen)
    implicit = build_prefs_implicit(rng, seen)
    prompts = build_prompts(rng, seen, pref_keys)
    return [("tiny_prefs.jsonl", prefs), ("tiny_prefs_text.jsonl", text),
            ("tiny_prefs_hh.jsonl", hh),
            ("tiny_prefs_implicit.jsonl", implicit),
            ("tiny_prompts.jsonl", prompts)]


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

    # Preference files: a separate random stream, so the files above keep
    # their bytes whatever happens here.
    for name, rows in build_pref_files(random.Random(PREF_SEED)):
        write_jsonl(out(name), rows)
        print(f"{name:<28} {len(rows):>4} rows")


if __name__ == "__main__":
    main()
