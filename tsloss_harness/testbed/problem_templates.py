"""The word-problem templates of `tsloss_harness.testbed.problems`, as data, and the words they draw from.

A template ``(rng, solution, who) -> question`` draws its numbers and words from ``rng``, writes the
worked steps into ``solution`` and returns the question. Each keeps its own order of ``rng`` calls:
the generated rows (and so the cached testbeds keyed by them) depend on it, call for call.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

NAMES = [
    ("Natalia", "she", "her"),
    ("Weng", "she", "her"),
    ("Betty", "she", "her"),
    ("Julie", "she", "her"),
    ("James", "he", "his"),
    ("Albert", "he", "his"),
    ("Mark", "he", "his"),
    ("Tina", "she", "her"),
    ("Randy", "he", "his"),
    ("Joy", "she", "her"),
    ("Carlos", "he", "his"),
    ("Priya", "she", "her"),
    ("Kenji", "he", "his"),
    ("Amara", "she", "her"),
    ("Lucas", "he", "his"),
    ("Sofia", "she", "her"),
    ("Omar", "he", "his"),
    ("Mei", "she", "her"),
    ("Daniel", "he", "his"),
    ("Fatima", "she", "her"),
    ("Ivan", "he", "his"),
    ("Grace", "she", "her"),
    ("Mateo", "he", "his"),
    ("Leila", "she", "her"),
    ("Noah", "he", "his"),
    ("Hannah", "she", "her"),
    ("Ravi", "he", "his"),
    ("Chloe", "she", "her"),
    ("Tom", "he", "his"),
    ("Nadia", "she", "her"),
    ("Samuel", "he", "his"),
    ("Yuki", "she", "her"),
]
_RELATIVES = ["brother", "sister", "cousin", "friend", "neighbor", "classmate"]
_ELDERS = ["mother", "father", "aunt", "uncle", "grandmother", "grandfather"]
ITEMS = [  # (plural, singular) things to buy, sell, collect or share
    ("clips", "clip"),
    ("pencils", "pencil"),
    ("apples", "apple"),
    ("stickers", "sticker"),
    ("notebooks", "notebook"),
    ("cupcakes", "cupcake"),
    ("marbles", "marble"),
    ("oranges", "orange"),
    ("comic books", "comic book"),
    ("candles", "candle"),
    ("toy cars", "toy car"),
    ("seashells", "seashell"),
    ("baseball cards", "baseball card"),
    ("muffins", "muffin"),
    ("balloons", "balloon"),
    ("erasers", "eraser"),
]
_SHOP_ITEMS = [
    ("shirts", "shirt"),
    ("books", "book"),
    ("hats", "hat"),
    ("mugs", "mug"),
    ("pens", "pen"),
    ("plants", "plant"),
    ("scarves", "scarf"),
    ("puzzles", "puzzle"),
    ("lamps", "lamp"),
    ("pairs of socks", "pair of socks"),
    ("bags of rice", "bag of rice"),
    ("tickets", "ticket"),
]
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_VEHICLES = ["car", "bike", "train", "bus", "truck", "boat"]
_JOBS = ["babysitting", "tutoring", "walking dogs", "washing cars", "mowing lawns", "working at a cafe"]
_PLANTS = [
    ("tomato plants", "tomato plant"),
    ("rose bushes", "rose bush"),
    ("carrots", "carrot"),
    ("sunflowers", "sunflower"),
    ("pepper plants", "pepper plant"),
    ("tulips", "tulip"),
]
_BAKED = [("cookies", "cookie"), ("muffins", "muffin"), ("brownies", "brownie"), ("rolls", "roll")]
_SHOWS = ["movie", "concert", "play", "documentary", "football game"]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class _Template:
    """A kind of problem: what it draws, its two phrasings, its worked steps.

    ``draw(rng, who)`` draws the numbers and words in a fixed order (the rows depend on it, call for
    call) and returns them as named fields; the phrasings and steps are ``str.format`` patterns over
    those fields. Each step ``(result, expression, sentence)`` computes ``expression`` exactly, names
    its value ``result`` for later steps, and writes ``sentence`` with ``{t}``, the annotated computation.
    """

    name: str
    draw: Callable[[random.Random, tuple[str, str, str]], dict]
    questions: tuple[str, str]
    steps: tuple[tuple[str, str, str], ...]
    money: bool = False  # every computation is in dollars

    def __call__(self, rng: random.Random, solution, who: tuple[str, str, str]) -> str:
        fields = self.draw(rng, who)
        question = rng.choice([q.format(**fields) for q in self.questions])
        for result, expression, sentence in self.steps:
            t, fields[result] = solution.calc(expression.format(**fields), money=self.money)
            solution.line(sentence.format(t=t, **fields))
        return question


def _who(who: tuple[str, str, str]) -> dict:
    name, pron, poss = who
    return {"name": name, "pron": pron, "poss": poss, "Pron": _cap(pron), "Poss": _cap(poss)}


def _draw_half_as_many(rng, who):
    items, _ = rng.choice(ITEMS)
    i = rng.randrange(11)
    return _who(who) | {"items": items, "m1": _MONTHS[i], "m2": _MONTHS[i + 1], "n": 2 * rng.randint(6, 60)}


def _draw_shopping(rng, who):
    (p1, s1), (p2, s2) = rng.sample(_SHOP_ITEMS, 2)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    pa, pb = rng.randint(2, 30), rng.randint(2, 30)
    return _who(who) | {"p1": p1, "s1": s1, "p2": p2, "s2": s2, "a": a, "b": b, "pa": pa, "pb": pb}


def _draw_change(rng, who):
    plural, single = rng.choice(_SHOP_ITEMS)
    n, price = rng.randint(2, 8), rng.randint(3, 12)
    bill = next(b for b in (20, 50, 100, 200) if b > n * price)
    return _who(who) | {"plural": plural, "single": single, "n": n, "price": price, "bill": bill}


def _draw_sharing(rng, who):
    items, _ = rng.choice(ITEMS)
    friends, each, kept = rng.randint(2, 9), rng.randint(2, 15), rng.randint(1, 20)
    reflexive = "herself" if who[1] == "she" else "himself"
    fields = {"items": items, "friends": friends, "kept": kept, "total": friends * each + kept, "reflexive": reflexive}
    # drawn last: the original wrote this choice inside the second phrasing, after all the numbers
    return _who(who) | fields | {"relative": rng.choice(_RELATIVES)}


def _draw_distance(rng, who):
    vehicle = rng.choice(_VEHICLES)
    v1, v2 = rng.randint(8, 70), rng.randint(8, 70)
    h1, h2 = rng.randint(1, 6), rng.randint(1, 6)
    return _who(who) | {"vehicle": vehicle, "v1": v1, "v2": v2, "h1": h1, "h2": h2}


def _draw_ages(rng, who):
    elder, relative = rng.choice(_ELDERS), rng.choice(_RELATIVES)
    age, k = rng.randint(6, 18), rng.randint(2, 4)
    return _who(who) | {"elder": elder, "relative": relative, "age": age, "k": k, "d": rng.randint(1, age - 2)}


def _draw_savings(rng, who):
    per_week, weeks = rng.randint(3, 25), rng.randint(3, 12)
    spent = rng.randint(1, per_week * weeks - 1)
    plural, single = rng.choice(_SHOP_ITEMS)
    return _who(who) | {"per_week": per_week, "weeks": weeks, "spent": spent, "plural": plural, "single": single}


def _draw_wages(rng, who):
    job = rng.choice(_JOBS)
    rate, hours, days = rng.randint(8, 30), rng.randint(2, 8), rng.randint(2, 7)
    return _who(who) | {"job": job, "rate": rate, "hours": hours, "days": days}


def _draw_baking(rng, who):
    baked, _ = rng.choice(_BAKED)
    boxes, per_box, eaten = rng.randint(2, 8), rng.randint(3, 12), rng.randint(1, 10)
    total = boxes * per_box + eaten
    per_tray = next(p for p in (12, 10, 9, 8, 6, 5, 4, 3, 2, 1) if total % p == 0)
    return _who(who) | {
        "baked": baked,
        "boxes": boxes,
        "eaten": eaten,
        "per_tray": per_tray,
        "trays": total // per_tray,
    }


def _draw_reading(rng, who):
    per_day, days = rng.randint(5, 40), rng.randint(2, 9)
    return _who(who) | {"per_day": per_day, "days": days, "pages": per_day * days + rng.randint(1, 200)}


def _draw_fraction_class(rng, who):
    k = rng.choice([2, 3, 4, 5])
    students = k * rng.randint(4, 10)
    walkers = rng.randint(1, students - students // k - 1)
    fraction = {2: "half", 3: "one third", 4: "a quarter", 5: "one fifth"}[k]
    return _who(who) | {"k": k, "students": students, "walkers": walkers, "Fraction": _cap(fraction)}


def _draw_garden(rng, who):
    plural, _ = rng.choice(_PLANTS)
    rows, per_row = rng.randint(2, 12), rng.randint(3, 15)
    died = rng.randint(1, rows * per_row - 1)
    return _who(who) | {"plural": plural, "rows": rows, "per_row": per_row, "died": died, "added": rng.randint(1, 30)}


def _draw_discount(rng, who):
    plural, single = rng.choice(_SHOP_ITEMS)
    price = 20 * rng.randint(1, 10)
    percent = rng.choice([10, 20, 25, 50])
    return _who(who) | {"plural": plural, "single": single, "price": price, "percent": percent, "n": rng.randint(2, 6)}


def _draw_comparison(rng, who):
    other, _, _ = rng.choice(NAMES)
    other = other if other != who[0] else "Alex"
    third = rng.choice(["Sam", "Jordan", "Riley", "Casey", "Morgan"])
    items, _ = rng.choice(ITEMS)
    x, more = rng.randint(3, 40), rng.randint(1, 40)
    if (x + more) % 2:  # the third person has half as many
        more += 1
    return _who(who) | {"other": other, "third": third, "items": items, "x": x, "more": more}


def _draw_minutes(rng, who):
    show = rng.choice(_SHOWS)
    hours, minutes, times = rng.randint(1, 3), rng.randint(5, 55), rng.randint(2, 4)
    return _who(who) | {"show": show, "hours": hours, "minutes": minutes, "times": times}


TEMPLATES: tuple[_Template, ...] = (
    _Template(
        "half_as_many",
        _draw_half_as_many,
        (
            "{name} sold {n} {items} in {m1}, and then {pron} sold half as many {items} in {m2}. "
            "How many {items} did {name} sell altogether in {m1} and {m2}?",
            "In {m1}, {name} collected {n} {items}. In {m2}, {pron} collected half as many. "
            "How many {items} did {pron} collect in the two months combined?",
        ),
        (
            ("half", "{n}/2", "{name} got {t} {items} in {m2}."),
            ("total", "{n}+{half}", "{name} got {t} {items} altogether in {m1} and {m2}."),
        ),
    ),
    _Template(
        "shopping",
        _draw_shopping,
        (
            "{name} buys {a} {p1} for ${pa} each and {b} {p2} for ${pb} each. How much does {pron} spend in total?",
            "At the market, a {s1} costs ${pa} and a {s2} costs ${pb}. {name} wants {a} {p1} and {b} {p2}. "
            "How many dollars will {pron} pay?",
        ),
        (
            ("ca", "{a}*{pa}", "The {p1} cost {t}."),
            ("cb", "{b}*{pb}", "The {p2} cost {t}."),
            ("total", "{ca}+{cb}", "{Pron} spends {t} in total."),
        ),
        money=True,
    ),
    _Template(
        "change",
        _draw_change,
        (
            "{name} bought {n} {plural} that cost ${price} each. {Pron} paid with a ${bill} bill. "
            "How much change did {pron} get?",
            "Each {single} costs ${price}. If {name} buys {n} of them and hands the cashier ${bill}, "
            "how much money does {pron} get back?",
        ),
        (
            ("cost", "{n}*{price}", "The {plural} cost {t}."),
            ("change", "{bill}-{cost}", "{name}'s change is {t}."),
        ),
        money=True,
    ),
    _Template(
        "sharing",
        _draw_sharing,
        (
            "{name} has {total} {items}. {Pron} keeps {kept} for {reflexive} "
            "and shares the rest equally among {friends} friends. How many {items} does each friend get?",
            "There are {total} {items} in a box. {name} takes out {kept} of them and splits the remaining {items} "
            "evenly between {friends} {relative}s. How many {items} does each one receive?",
        ),
        (
            ("rest", "{total}-{kept}", "There are {t} {items} left to share."),
            ("share", "{rest}/{friends}", "Each friend gets {t} {items}."),
        ),
    ),
    _Template(
        "distance",
        _draw_distance,
        (
            "{name} travels by {vehicle} at {v1} miles per hour for {h1} hours, and then at {v2} miles per hour "
            "for {h2} hours. How many miles does {pron} travel in total?",
            "A {vehicle} goes {v1} miles each hour for the first {h1} hours of a trip and {v2} miles each hour "
            "for the next {h2} hours. How far does the {vehicle} go?",
        ),
        (
            ("d1", "{v1}*{h1}", "The first part of the trip is {t} miles."),
            ("d2", "{v2}*{h2}", "The second part of the trip is {t} miles."),
            ("total", "{d1}+{d2}", "The total distance is {t} miles."),
        ),
    ),
    _Template(
        "ages",
        _draw_ages,
        (
            "{name} is {age} years old. {Poss} {elder} is {k} times as old as {name}, and {poss} {relative} "
            "is {d} years younger than {name}. What is the sum of their three ages?",
            "{name}'s {relative} is {d} years younger than {name}, who is {age}. {name}'s {elder} is {k} times "
            "{name}'s age. How old are the three of them together?",
        ),
        (
            ("older", "{k}*{age}", "The {elder} is {t} years old."),
            ("younger", "{age}-{d}", "The {relative} is {t} years old."),
            ("total", "{age}+{older}+{younger}", "Together they are {t} years old."),
        ),
    ),
    _Template(
        "savings",
        _draw_savings,
        (
            "{name} saves ${per_week} every week for {weeks} weeks. Then {pron} spends ${spent} on a {single}. "
            "How much money does {pron} have left?",
            "For {weeks} weeks, {name} puts ${per_week} into a piggy bank each week. {Pron} later takes out "
            "${spent} to buy some {plural}. How many dollars remain in the piggy bank?",
        ),
        (
            ("saved", "{per_week}*{weeks}", "{name} saves {t}."),
            ("left", "{saved}-{spent}", "{Pron} has {t} left."),
        ),
        money=True,
    ),
    _Template(
        "wages",
        _draw_wages,
        (
            "{name} earns ${rate} an hour for {job}. {Pron} works {hours} hours a day for {days} days. "
            "How much does {pron} earn?",
            "{name} is paid ${rate} per hour {job}. If {pron} spends {hours} hours a day {job} for {days} days, "
            "how many dollars does {pron} make?",
        ),
        (
            ("daily", "{rate}*{hours}", "{name} earns {t} each day."),
            ("total", "{daily}*{days}", "In {days} days {pron} earns {t}."),
        ),
        money=True,
    ),
    _Template(
        "baking",
        _draw_baking,
        (
            "{name} bakes {trays} trays of {baked} with {per_tray} {baked} on each tray. {Pron} eats {eaten} "
            "of them and packs the rest equally into {boxes} boxes. How many {baked} go in each box?",
            "There are {per_tray} {baked} on each of {trays} trays. After {name}'s family eats {eaten}, the rest "
            "are split evenly into {boxes} bags. How many {baked} are in each bag?",
        ),
        (
            ("made", "{trays}*{per_tray}", "{name} bakes {t} {baked}."),
            ("left", "{made}-{eaten}", "After eating some, {t} {baked} are left."),
            ("per_box", "{left}/{boxes}", "Each box gets {t} {baked}."),
        ),
    ),
    _Template(
        "reading",
        _draw_reading,
        (
            "{name} is reading a {pages}-page book. {Pron} reads {per_day} pages a day for {days} days. "
            "How many pages does {pron} still have to read?",
            "A book has {pages} pages. If {name} reads {per_day} pages every day, how many pages are left "
            "after {days} days?",
        ),
        (
            ("read", "{per_day}*{days}", "{name} reads {t} pages."),
            ("left", "{pages}-{read}", "There are {t} pages left."),
        ),
    ),
    _Template(
        "fraction_class",
        _draw_fraction_class,
        (
            "There are {students} students in {name}'s class. {Fraction} of them ride the bus to school, "
            "{walkers} walk, and the rest come by car. How many students come by car?",
            "{name}'s school club has {students} members. {Fraction} of the members play chess, {walkers} "
            "play cards, and the others paint. How many members paint?",
        ),
        (
            ("first", "{students}/{k}", "{Fraction} of the group is {t} students."),
            ("rest", "{students}-{first}", "That leaves {t} students."),
            ("last", "{rest}-{walkers}", "So {t} students are in the last group."),
        ),
    ),
    _Template(
        "garden",
        _draw_garden,
        (
            "{name} plants {rows} rows of {plural} with {per_row} in each row. {died} of them die, and then "
            "{pron} plants {added} more. How many {plural} are in the garden now?",
            "A garden has {rows} rows with {per_row} {plural} per row. After a storm, {died} are lost. "
            "{name} buys {added} new ones. How many {plural} does the garden have?",
        ),
        (
            ("planted", "{rows}*{per_row}", "There were {t} {plural} at first."),
            ("alive", "{planted}-{died}", "After some died, {t} were left."),
            ("now", "{alive}+{added}", "Now there are {t} {plural}."),
        ),
    ),
    _Template(
        "discount",
        _draw_discount,
        (
            "A {single} normally costs ${price}. This week it is {percent}% off. How much does {name} pay "
            "for {n} {plural}?",
            "{name} wants {n} {plural}. Each one is priced at ${price}, but the store gives a {percent}% discount. "
            "How much will {pron} spend?",
        ),
        (
            ("off", "{price}*{percent}/100", "The discount is {t} per {single}."),
            ("each", "{price}-{off}", "Each {single} costs {t}."),
            ("total", "{n}*{each}", "{name} pays {t}."),
        ),
        money=True,
    ),
    _Template(
        "comparison",
        _draw_comparison,
        (
            "{name} has {x} {items}. {other} has {more} more {items} than {name}, and {third} has half as many "
            "as {other}. How many {items} do they have in all?",
            "{other} owns {more} more {items} than {name}, who owns {x}. {third} owns half as many {items} as "
            "{other}. What is the total number of {items}?",
        ),
        (
            ("b", "{x}+{more}", "{other} has {t} {items}."),
            ("c", "{b}/2", "{third} has {t} {items}."),
            ("total", "{x}+{b}+{c}", "In all they have {t} {items}."),
        ),
    ),
    _Template(
        "minutes",
        _draw_minutes,
        (
            "A {show} lasts {hours} hours and {minutes} minutes. {name} watches it {times} times. "
            "How many minutes does {pron} spend watching?",
            "{name} watched a {show} that was {hours} hours and {minutes} minutes long, {times} times in a row. "
            "How many minutes was that?",
        ),
        (
            ("h_min", "{hours}*60", "{hours} hours is {t} minutes."),
            ("once", "{h_min}+{minutes}", "The {show} is {t} minutes long."),
            ("total", "{once}*{times}", "{name} spends {t} minutes watching."),
        ),
    ),
)
