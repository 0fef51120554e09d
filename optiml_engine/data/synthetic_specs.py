"""The catalogue of synthetic tasks: 14 categories x 5 tasks, each category sharing one skill.

Every generator takes a `random.Random` and returns `(input, output)` or, for tasks whose answer
options differ per instance, `(input, output, options)`. Vocabularies are small and inputs short so
a tiny byte-level model can learn the seen tasks in minutes; tasks of one category differ in
wording, format and vocabulary, so a held-out task of a seen category is learnable in principle.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

ANIMALS = ("cat dog horse cow sheep lion tiger bear wolf fox rabbit mouse eagle owl duck "
           "goat").split()
COLORS = "red blue green yellow black white pink orange purple brown gray gold".split()
FRUITS = "apple banana cherry grape lemon mango peach pear plum melon kiwi lime".split()
VEHICLES = "car bus train bike truck boat plane ship taxi van tram jeep".split()
NAMES = ("Anna Ben Carl Dora Emma Fred Gina Hugo Ivy Jack Kate Leo Mia Nick Olga Paul Rosa Sam "
         "Tina Uma").split()
PLACES = ("in the park|at the zoo|near the river|on the farm|in the city|at school|in the garden|"
          "on the hill|at the beach|in the forest").split("|")
WORDS = ANIMALS + COLORS + FRUITS + VEHICLES
GOOD = ("great wonderful lovely excellent delightful fantastic amazing pleasant superb "
        "charming").split()
BAD = "terrible awful boring dreadful horrible poor dull disappointing nasty bad".split()
VOWELS = "aeiou"
NLI = ("entailment", "neutral", "contradiction")


@dataclass(frozen=True)
class Spec:
    slug: str
    category: str
    definition: str
    generate: Callable[[random.Random], tuple]
    options: tuple[str, ...] | None = None  # task-level answer options (None: free-form)
    metric: str = "exact_match"


def rword(rng: random.Random, lo: int = 3, hi: int = 7) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


def words(rng: random.Random, lo: int = 3, hi: int = 6) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]


def nums(rng: random.Random, lo: int = 3, hi: int = 6, top: int = 99) -> list[int]:
    return [rng.randint(0, top) for _ in range(rng.randint(lo, hi))]


def yes_no(flag: bool, yes: str = "yes", no: str = "no") -> str:
    return yes if flag else no


def shift(word: str, k: int) -> str:
    return "".join(chr((ord(c) - 97 + k) % 26 + 97) for c in word)


def palindrome(rng: random.Random, want: bool) -> str:
    half = rword(rng, 2, 4)
    if want:
        middle = rng.choice(string.ascii_lowercase) if rng.random() < 0.5 else ""
        return half + middle + half[::-1]
    while True:
        w = rword(rng, 4, 8)
        if w != w[::-1]:
            return w


def review(rng: random.Random, subjects: list[str]) -> tuple[str, bool]:
    good = rng.random() < 0.5
    adjs = GOOD if good else BAD
    lead = rng.choice(["", "Honestly, ", "I think ", f"{rng.choice(NAMES)} said ", "Overall, "])
    extra = rng.choice(["", " and " + rng.choice(subjects) + " was " + rng.choice(adjs)])
    return f"{lead}the {rng.choice(subjects)} was {rng.choice(adjs)}{extra}.", good


def entail_pair(rng: random.Random) -> tuple[str, str, str]:
    """A templated premise/hypothesis pair and its label (entailment/neutral/contradiction)."""
    name, fruit, n = rng.choice(NAMES), rng.choice(FRUITS), rng.randint(2, 9)
    premise = f"{name} bought {n} {fruit}s {rng.choice(PLACES)}."
    label = rng.choice(["entailment", "neutral", "contradiction"])
    if label == "entailment":
        hyp = rng.choice([f"{name} bought {fruit}s.", f"{name} bought some fruit.",
                          f"{name} bought more than one {fruit}."])
    elif label == "neutral":
        hyp = rng.choice([f"{name} likes {rng.choice(COLORS)} {fruit}s.",
                          f"{name} bought a {rng.choice(VEHICLES)}.",
                          f"{name} was with {rng.choice([x for x in NAMES if x != name])}."])
    else:
        m = rng.choice([k for k in range(2, 10) if k != n])
        hyp = rng.choice([f"{name} bought {m} {fruit}s.", f"{name} bought nothing.",
                          f"{rng.choice([x for x in NAMES if x != name])} bought them."])
    return premise, hyp, label


def category_of(word: str) -> str:
    for cat, vocab in (("animal", ANIMALS), ("color", COLORS), ("fruit", FRUITS),
                       ("vehicle", VEHICLES)):
        if word in vocab:
            return cat
    raise KeyError(word)


def odd_one_out(rng: random.Random) -> tuple:
    groups = [ANIMALS, COLORS, FRUITS, VEHICLES]
    main, other = rng.sample(groups, 2)
    picks = rng.sample(main, 3) + [rng.choice(other)]
    odd = picks[-1]
    rng.shuffle(picks)
    return "Words: " + ", ".join(picks), odd, picks


def count_up(rng: random.Random) -> tuple[str, str]:
    a, n = rng.randint(0, 990), rng.randint(2, 4)
    return ", ".join(str(a + i) for i in range(n)), str(a + n)


def count_down(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(3, 9999)
    return ", ".join(str(a - i) for i in range(3)), str(a - 3)


def progression(rng: random.Random) -> tuple[str, str]:
    a, k = rng.randint(0, 999), rng.randint(2, 9)
    return ", ".join(str(a + i * k) for i in range(3)), str(a + 3 * k)


def _sentence(rng: random.Random) -> str:
    return " ".join(words(rng, 4, 7))


def _letters(word: str) -> str:
    return ", ".join(word)


def sentiment(subjects: list[str], pos: str, neg: str) -> Callable[[random.Random], tuple]:
    def gen(rng: random.Random) -> tuple[str, str]:
        text, good = review(rng, subjects)
        return text, pos if good else neg
    return gen


def nli(fmt: str, labels: dict[str, str]) -> Callable[[random.Random], tuple]:
    def gen(rng: random.Random) -> tuple[str, str]:
        premise, hypothesis, label = entail_pair(rng)
        return fmt.format(p=premise, h=hypothesis), labels[label]
    return gen


def number_palindrome(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        d = str(rng.randint(10, 99999))
    else:
        h = str(rng.randint(1, 999))
        d = h + h[::-1]
    return d, yes_no(d == d[::-1], "True", "False")


def reverse_pair(rng: random.Random) -> tuple[str, str]:
    a = rword(rng)
    b = a[::-1] if rng.random() < 0.5 else rword(rng)
    return f"{a}, {b}", yes_no(b == a[::-1])


def larger(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(1000), 2)
    return f"{a} and {b}", yes_no(a > b, "first", "second")


def equal_numbers(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(0, 999)
    b = a if rng.random() < 0.5 else rng.randint(0, 999)
    return f"{a}, {b}", yes_no(a == b)


def same_first(rng: random.Random) -> tuple[str, str]:
    a = rword(rng)
    b = (a[0] if rng.random() < 0.5 else "") + rword(rng, 2, 6)
    return f"{a}; {b}", yes_no(a[0] == b[0])


def same_sentence(rng: random.Random) -> tuple[str, str]:
    a = _sentence(rng)
    b = a if rng.random() < 0.5 else _sentence(rng)
    return f"A: {a}\nB: {b}", yes_no(a == b, "MATCH", "DIFFERENT")


def same_word(rng: random.Random) -> tuple[str, str]:
    a = rword(rng)
    b = a if rng.random() < 0.5 else rword(rng)
    return f"{a} | {b}", yes_no(a == b)


def anagram(rng: random.Random) -> tuple[str, str]:
    a = rword(rng)
    b = "".join(rng.sample(a, len(a))) if rng.random() < 0.5 else rword(rng)
    return f"{a}, {b}", yes_no(sorted(a) == sorted(b))


def word_in_scene(verb: str, label: Callable[[str], str]) -> Callable[[random.Random], tuple]:
    def gen(rng: random.Random) -> tuple[str, str]:
        w = rng.choice(WORDS)
        return f"{rng.choice(NAMES)} {verb} a {w.upper()} {rng.choice(PLACES)}.", label(w)
    return gen


R, C, A, S, N, Q, X = ("Reversal", "Case Conversion", "Arithmetic", "Sorting", "Counting",
                       "Sequence Continuation", "Word Extraction")
SA, PD, TE, NC, WS, TM, MB = ("Sentiment Analysis", "Palindrome Detection", "Textual Entailment",
                              "Number Comparison", "Word Semantics", "Text Matching", "Membership")


def _specs() -> list[Spec]:
    s = Spec
    return [
        # --- free-form: reversal
        s("reverse_letters", R, "Write the given word with its letters in reverse order.",
          lambda r: (w := rword(r), w[::-1])),
        s("reverse_word_order", R, "Reverse the order of the words in the sentence. Keep each word "
          "unchanged.", lambda r: (" ".join(ws := words(r)), " ".join(ws[::-1])), metric="rouge_l"),
        s("reverse_digits", R, "You are given a number. Output its digits in reverse order.",
          lambda r: (d := str(r.randint(10, 999999)), d[::-1])),
        s("reverse_letter_list", R, "Reverse the comma-separated list of letters.",
          lambda r: (_letters(w := rword(r, 3, 6)), _letters(w[::-1]))),
        s("backwards_word", R, "In this task you read a word and spell it backwards.",
          lambda r: ("Word: " + (w := rword(r, 4, 8)), w[::-1])),
        # --- free-form: case conversion
        s("uppercase_word", C, "Convert the given word to upper case letters.",
          lambda r: (w := rword(r), w.upper())),
        s("lowercase_word", C, "Rewrite the word using only lower case letters.",
          lambda r: ((w := rword(r)).upper(), w)),
        s("capitalize_word", C, "Capitalize the first letter of the word and keep the rest "
          "lower case.", lambda r: (w := rword(r), w.capitalize())),
        s("uppercase_sentence", C, "Write the whole sentence in capital letters.",
          lambda r: (t := _sentence(r), t.upper()), metric="rouge_l"),
        s("title_case", C, "Capitalize the first letter of every word in the input.",
          lambda r: (t := _sentence(r), " ".join(w.capitalize() for w in t.split())),
          metric="rouge_l"),
        # --- free-form: arithmetic
        s("add_two", A, "Add the two numbers and give the sum.",
          lambda r: (f"{(a := r.randint(0, 99))} + {(b := r.randint(0, 99))}", str(a + b))),
        s("subtract_two", A, "Subtract the second number from the first and give the result.",
          lambda r: (f"{(a := r.randint(0, 99))} - {(b := r.randint(0, a))}", str(a - b))),
        s("add_three", A, "Compute the sum of the three numbers.",
          lambda r: (" + ".join(map(str, v := nums(r, 3, 3, 30))), str(sum(v)))),
        s("double_number", A, "What is twice the given number? Answer with a number.",
          lambda r: (f"Number: {(a := r.randint(0, 4999))}", str(2 * a))),
        s("word_problem_add", A, "Answer the word problem with a single number.",
          lambda r: (f"{r.choice(NAMES)} has {(a := r.randint(1, 50))} {r.choice(FRUITS)}s and "
                     f"gets {(b := r.randint(1, 50))} more. How many now?", str(a + b))),
        # --- free-form: sorting
        s("sort_letters", S, "Sort the letters of the word in alphabetical order.",
          lambda r: (w := rword(r), "".join(sorted(w)))),
        s("sort_numbers_ascending", S, "Sort the numbers from smallest to largest.",
          lambda r: (" ".join(map(str, v := nums(r))), " ".join(map(str, sorted(v))))),
        s("sort_words", S, "Sort the words alphabetically.",
          lambda r: (" ".join(ws := words(r)), " ".join(sorted(ws))), metric="rouge_l"),
        s("sort_numbers_descending", S, "Order the numbers from largest to smallest.",
          lambda r: (", ".join(map(str, v := nums(r))), ", ".join(map(str, sorted(v)[::-1])))),
        s("sort_letter_list", S, "Put the comma-separated letters in alphabetical order.",
          lambda r: (_letters(w := rword(r, 3, 6)), _letters("".join(sorted(w))))),
        # --- free-form: counting
        s("count_words", N, "How many words are in the sentence? Answer with a number.",
          lambda r: (t := _sentence(r), str(len(t.split())))),
        s("count_letters", N, "Count the letters in the word.",
          lambda r: (w := rword(r, 2, 12), str(len(w)))),
        s("count_given_letter", N, "Count how many times the letter appears in the word.",
          lambda r: (f"Word: {(w := rword(r, 4, 10))}. Letter: {(c := r.choice(w))}",
                     str(w.count(c)))),
        s("count_vowels", N, "Count the vowels (a, e, i, o, u) in the word.",
          lambda r: (w := rword(r, 3, 10), str(sum(c in VOWELS for c in w)))),
        s("count_list_items", N, "Say how many items the comma-separated list has.",
          lambda r: (", ".join(ws := words(r, 2, 8)), str(len(ws)))),
        # --- free-form: sequence continuation
        s("next_number", Q, "Continue the counting sequence with the next number.",
          count_up),
        s("count_down", Q, "The numbers count down. Give the number that comes next.",
          count_down),
        s("arithmetic_progression", Q, "The numbers grow by a fixed step. Write the next one.",
          progression),
        s("shift_letters_forward", Q, "Replace every letter of the word by the letter that comes "
          "after it in the alphabet (z becomes a).", lambda r: (w := rword(r, 3, 6), shift(w, 1))),
        s("shift_letters_back", Q, "Replace every letter of the word by the letter before it in "
          "the alphabet (a becomes z).", lambda r: (w := rword(r, 3, 6), shift(w, -1))),
        # --- free-form: word extraction
        s("first_word", X, "Output the first word of the sentence.",
          lambda r: (t := _sentence(r), t.split()[0])),
        s("last_word", X, "Output the last word of the sentence.",
          lambda r: (t := _sentence(r), t.split()[-1])),
        s("second_word", X, "Which word comes second in the sentence? Write that word.",
          lambda r: (t := _sentence(r), t.split()[1])),
        s("longest_word", X, "Find the longest word in the list. If there is a tie, give the "
          "first one.", lambda r: (" ".join(ws := words(r)), max(ws, key=len))),
        s("quoted_word", X, "Copy the word that appears between quotes.",
          lambda r: (f"{r.choice(NAMES)} said \"{(w := rword(r))}\" {r.choice(PLACES)}.", w)),
        # --- classification: sentiment
        s("movie_review_sentiment", SA, "Classify the movie review as positive or negative.",
          sentiment(["movie", "plot", "acting", "ending", "music"], "positive", "negative"),
          options=("negative", "positive")),
        s("restaurant_review_quality", SA, "Was the restaurant experience good or bad? Answer good "
          "or bad.", sentiment(["food", "service", "soup", "waiter", "dessert"], "good", "bad"),
          options=("bad", "good")),
        s("product_review_is_positive", SA, "Is this product review positive? Answer yes or no.",
          sentiment(["phone", "screen", "battery", "price", "camera"], "yes", "no"),
          options=("no", "yes")),
        s("tweet_mood", SA, "Does the author of the tweet feel happy or sad?",
          sentiment(["weekend", "trip", "party", "game", "concert"], "happy", "sad"),
          options=("happy", "sad")),
        s("hotel_review_polarity", SA, "Label the hotel review POS if its sentiment is positive "
          "and NEG if it is negative.",
          sentiment(["room", "bed", "staff", "view", "breakfast"], "POS", "NEG"),
          options=("NEG", "POS")),
        # --- classification: palindrome detection
        s("is_palindrome_word", PD, "Is the word a palindrome (the same read backwards)? "
          "Answer yes or no.", lambda r: (w := palindrome(r, r.random() < 0.5), yes_no(
              w == w[::-1])), options=("no", "yes")),
        s("is_palindrome_number", PD, "Decide whether the number reads the same backwards. "
          "Answer True or False.", number_palindrome, options=("False", "True")),
        s("is_symmetric_list", PD, "Is the list of letters symmetric, that is, the same from "
          "both ends? Answer yes or no.", lambda r: (_letters(w := palindrome(r, r.random() < .5)),
                                                     yes_no(w == w[::-1])), options=("no", "yes")),
        s("is_reverse_pair", PD, "Is the second word the first word written backwards? "
          "Answer yes or no.", reverse_pair, options=("no", "yes")),
        s("palindrome_label", PD, "Label the string PALINDROME if it is a palindrome and "
          "NORMAL otherwise.", lambda r: (w := palindrome(r, r.random() < 0.5),
                                          yes_no(w == w[::-1], "PALINDROME", "NORMAL")),
          options=("NORMAL", "PALINDROME")),
        # --- classification: textual entailment
        s("nli_three_way", TE, "Given a premise and a hypothesis, answer entailment, neutral or "
          "contradiction.", nli("Premise: {p} Hypothesis: {h}", {k: k for k in NLI}),
          options=("contradiction", "entailment", "neutral")),
        s("nli_yes_no", TE, "Does the first sentence imply the second? Answer yes or no.",
          nli("{p} / {h}", dict(zip(NLI, ("yes", "no", "no"), strict=True))),
          options=("no", "yes")),
        s("nli_true_false", TE, "Read the fact and say whether the claim is True, False or "
          "Unknown.", nli("Fact: {p} Claim: {h}", dict(zip(NLI, ("True", "Unknown", "False"),
                                                           strict=True))),
          options=("False", "True", "Unknown")),
        s("nli_contradiction", TE, "Do the two sentences contradict each other? Answer yes or no.",
          nli("{p} {h}", dict(zip(NLI, ("no", "no", "yes"), strict=True))),
          options=("no", "yes")),
        s("nli_follows", TE, "Answer follows, unrelated or conflicts for the statement given the "
          "context.", nli("Context: {p}\nStatement: {h}",
                          dict(zip(NLI, ("follows", "unrelated", "conflicts"), strict=True))),
          options=("conflicts", "follows", "unrelated")),
        # --- classification: number comparison
        s("is_even", NC, "Is the number even? Answer yes or no.",
          lambda r: (str(a := r.randint(0, 9999)), yes_no(a % 2 == 0)), options=("no", "yes")),
        s("which_larger", NC, "Which of the two numbers is larger, the first or the second?",
          larger, options=("first", "second")),
        s("greater_than", NC, "Is the first number greater than the second? Answer True or False.",
          lambda r: (f"{(a := r.randint(0, 999))} > {(b := r.randint(0, 999))}",
                     yes_no(a > b, "True", "False")), options=("False", "True")),
        s("numbers_equal", NC, "Are the two numbers equal? Answer yes or no.", equal_numbers,
          options=("no", "yes")),
        s("above_fifty", NC, "Is the number above 50? Answer yes or no.",
          lambda r: (f"{r.choice(NAMES)} scored {(a := r.randint(0, 100))} {r.choice(PLACES)}.",
                     yes_no(a > 50)), options=("no", "yes")),
        # --- classification: word semantics
        s("word_category", WS, "Say whether the word in capitals is an animal, a color, a fruit "
          "or a vehicle.", word_in_scene("saw", category_of),
          options=("animal", "color", "fruit", "vehicle")),
        s("is_animal", WS, "Is the word in capitals an animal? Answer yes or no.",
          word_in_scene("drew", lambda w: yes_no(w in ANIMALS)), options=("no", "yes")),
        s("is_fruit", WS, "Can the object in capitals be eaten as a fruit? Answer yes or no.",
          word_in_scene("found", lambda w: yes_no(w in FRUITS)), options=("no", "yes")),
        s("odd_one_out", WS, "One word does not belong with the others. Which one?", odd_one_out),
        s("is_vehicle", WS, "Label the capitalized word VEHICLE if you can ride in it, else OTHER.",
          word_in_scene("liked", lambda w: yes_no(w in VEHICLES, "VEHICLE", "OTHER")),
          options=("OTHER", "VEHICLE")),
        # --- classification: text matching
        s("same_word", TM, "Are the two words exactly the same? Answer yes or no.", same_word,
          options=("no", "yes")),
        s("anagram_pair", TM, "Are the two words anagrams of each other? Answer yes or no.",
          anagram, options=("no", "yes")),
        s("same_length", TM, "Do the two words have the same number of letters? Answer True or "
          "False.", lambda r: (f"{(a := rword(r))} {(b := rword(r))}",
                               yes_no(len(a) == len(b), "True", "False")),
          options=("False", "True")),
        s("same_first_letter", TM, "Do the two words start with the same letter? Answer yes or "
          "no.", same_first, options=("no", "yes")),
        s("same_sentence", TM, "Say MATCH if the two sentences are identical, otherwise DIFFERENT.",
          same_sentence, options=("DIFFERENT", "MATCH")),
        # --- classification: membership
        s("contains_letter", MB, "Does the word contain the given letter? Answer yes or no.",
          lambda r: (f"Word: {(w := rword(r))}. Letter: {(c := r.choice(string.ascii_lowercase))}",
                     yes_no(c in w)), options=("no", "yes")),
        s("number_in_list", MB, "Is the number in the list? Answer yes or no.",
          lambda r: (f"List: {' '.join(map(str, v := nums(r, 3, 6, 20)))}. Number: "
                     f"{(a := r.randint(0, 20))}", yes_no(a in v)), options=("no", "yes")),
        s("mentions_color", MB, "Does the sentence mention a color? Answer yes or no.",
          lambda r: (" ".join(ws := words(r, 3, 6)), yes_no(any(w in COLORS for w in ws))),
          options=("no", "yes")),
        s("starts_with_vowel", MB, "Does the word start with a vowel? Answer True or False.",
          lambda r: (w := rword(r), yes_no(w[0] in VOWELS, "True", "False")),
          options=("False", "True")),
        s("name_in_list", MB, "Is the name on the guest list? Answer yes or no.",
          lambda r: (f"Guests: {', '.join(g := r.sample(NAMES, 4))}. Name: "
                     f"{(n := r.choice(NAMES))}", yes_no(n in g)), options=("no", "yes")),
    ]


SPECS: list[Spec] = _specs()
