"""The word-problem templates of `tsloss_harness.testbed.problems`, and the words they draw from.

A template ``(rng, solution, who) -> question`` draws its numbers and words from ``rng``, writes the
worked steps into ``solution`` and returns the question. Each keeps its own order of ``rng`` calls:
the generated rows (and so the cached testbeds keyed by them) depend on it, call for call.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _t_half_as_many(rng, s, who):
    name, pron, _ = who
    items, _ = rng.choice(ITEMS)
    i = rng.randrange(11)
    m1, m2 = _MONTHS[i], _MONTHS[i + 1]
    n = 2 * rng.randint(6, 60)
    q = rng.choice(
        [
            f"{name} sold {n} {items} in {m1}, and then {pron} sold half as many {items} in {m2}. "
            f"How many {items} did {name} sell altogether in {m1} and {m2}?",
            f"In {m1}, {name} collected {n} {items}. In {m2}, {pron} collected half as many. "
            f"How many {items} did {pron} collect in the two months combined?",
        ]
    )
    t, half = s.calc(f"{n}/2")
    s.line(f"{name} got {t} {items} in {m2}.")
    t, _ = s.calc(f"{n}+{half}")
    s.line(f"{name} got {t} {items} altogether in {m1} and {m2}.")
    return q


def _t_shopping(rng, s, who):
    name, pron, _ = who
    (p1, s1), (p2, s2) = rng.sample(_SHOP_ITEMS, 2)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    pa, pb = rng.randint(2, 30), rng.randint(2, 30)
    q = rng.choice(
        [
            f"{name} buys {a} {p1} for ${pa} each and {b} {p2} for ${pb} each. How much does {pron} spend in total?",
            f"At the market, a {s1} costs ${pa} and a {s2} costs ${pb}. {name} wants {a} {p1} and {b} {p2}. "
            f"How many dollars will {pron} pay?",
        ]
    )
    t, ca = s.calc(f"{a}*{pa}", money=True)
    s.line(f"The {p1} cost {t}.")
    t, cb = s.calc(f"{b}*{pb}", money=True)
    s.line(f"The {p2} cost {t}.")
    t, _ = s.calc(f"{ca}+{cb}", money=True)
    s.line(f"{_cap(pron)} spends {t} in total.")
    return q


def _t_change(rng, s, who):
    name, pron, poss = who
    plural, single = rng.choice(_SHOP_ITEMS)
    n, price = rng.randint(2, 8), rng.randint(3, 12)
    bill = next(b for b in (20, 50, 100, 200) if b > n * price)
    q = rng.choice(
        [
            f"{name} bought {n} {plural} that cost ${price} each. {_cap(pron)} paid with a ${bill} bill. "
            f"How much change did {pron} get?",
            f"Each {single} costs ${price}. If {name} buys {n} of them and hands the cashier ${bill}, "
            f"how much money does {pron} get back?",
        ]
    )
    t, cost = s.calc(f"{n}*{price}", money=True)
    s.line(f"The {plural} cost {t}.")
    t, _ = s.calc(f"{bill}-{cost}", money=True)
    s.line(f"{name}'s change is {t}.")
    return q


def _t_sharing(rng, s, who):
    name, pron, poss = who
    items, _ = rng.choice(ITEMS)
    friends, each, kept = rng.randint(2, 9), rng.randint(2, 15), rng.randint(1, 20)
    total = friends * each + kept
    q = rng.choice(
        [
            f"{name} has {total} {items}. {_cap(pron)} keeps {kept} for {'herself' if pron == 'she' else 'himself'} "
            f"and shares the rest equally among {friends} friends. How many {items} does each friend get?",
            f"There are {total} {items} in a box. {name} takes out {kept} of them and splits the remaining {items} "
            f"evenly between {friends} {rng.choice(_RELATIVES)}s. How many {items} does each one receive?",
        ]
    )
    t, rest = s.calc(f"{total}-{kept}")
    s.line(f"There are {t} {items} left to share.")
    t, _ = s.calc(f"{rest}/{friends}")
    s.line(f"Each friend gets {t} {items}.")
    return q


def _t_distance(rng, s, who):
    name, pron, _ = who
    vehicle = rng.choice(_VEHICLES)
    v1, v2 = rng.randint(8, 70), rng.randint(8, 70)
    h1, h2 = rng.randint(1, 6), rng.randint(1, 6)
    q = rng.choice(
        [
            f"{name} travels by {vehicle} at {v1} miles per hour for {h1} hours, and then at {v2} miles per hour "
            f"for {h2} hours. How many miles does {pron} travel in total?",
            f"A {vehicle} goes {v1} miles each hour for the first {h1} hours of a trip and {v2} miles each hour "
            f"for the next {h2} hours. How far does the {vehicle} go?",
        ]
    )
    t, d1 = s.calc(f"{v1}*{h1}")
    s.line(f"The first part of the trip is {t} miles.")
    t, d2 = s.calc(f"{v2}*{h2}")
    s.line(f"The second part of the trip is {t} miles.")
    t, _ = s.calc(f"{d1}+{d2}")
    s.line(f"The total distance is {t} miles.")
    return q


def _t_ages(rng, s, who):
    name, _, poss = who
    elder, relative = rng.choice(_ELDERS), rng.choice(_RELATIVES)
    age, k = rng.randint(6, 18), rng.randint(2, 4)
    d = rng.randint(1, age - 2)
    q = rng.choice(
        [
            f"{name} is {age} years old. {_cap(poss)} {elder} is {k} times as old as {name}, and {poss} {relative} "
            f"is {d} years younger than {name}. What is the sum of their three ages?",
            f"{name}'s {relative} is {d} years younger than {name}, who is {age}. {name}'s {elder} is {k} times "
            f"{name}'s age. How old are the three of them together?",
        ]
    )
    t, older = s.calc(f"{k}*{age}")
    s.line(f"The {elder} is {t} years old.")
    t, younger = s.calc(f"{age}-{d}")
    s.line(f"The {relative} is {t} years old.")
    t, _ = s.calc(f"{age}+{older}+{younger}")
    s.line(f"Together they are {t} years old.")
    return q


def _t_savings(rng, s, who):
    name, pron, _ = who
    per_week, weeks = rng.randint(3, 25), rng.randint(3, 12)
    spent = rng.randint(1, per_week * weeks - 1)
    plural, single = rng.choice(_SHOP_ITEMS)
    q = rng.choice(
        [
            f"{name} saves ${per_week} every week for {weeks} weeks. Then {pron} spends ${spent} on a {single}. "
            f"How much money does {pron} have left?",
            f"For {weeks} weeks, {name} puts ${per_week} into a piggy bank each week. {_cap(pron)} later takes out "
            f"${spent} to buy some {plural}. How many dollars remain in the piggy bank?",
        ]
    )
    t, saved = s.calc(f"{per_week}*{weeks}", money=True)
    s.line(f"{name} saves {t}.")
    t, _ = s.calc(f"{saved}-{spent}", money=True)
    s.line(f"{_cap(pron)} has {t} left.")
    return q


def _t_wages(rng, s, who):
    name, pron, _ = who
    job = rng.choice(_JOBS)
    rate, hours, days = rng.randint(8, 30), rng.randint(2, 8), rng.randint(2, 7)
    q = rng.choice(
        [
            f"{name} earns ${rate} an hour for {job}. {_cap(pron)} works {hours} hours a day for {days} days. "
            f"How much does {pron} earn?",
            f"{name} is paid ${rate} per hour {job}. If {pron} spends {hours} hours a day {job} for {days} days, "
            f"how many dollars does {pron} make?",
        ]
    )
    t, daily = s.calc(f"{rate}*{hours}", money=True)
    s.line(f"{name} earns {t} each day.")
    t, _ = s.calc(f"{daily}*{days}", money=True)
    s.line(f"In {days} days {pron} earns {t}.")
    return q


def _t_baking(rng, s, who):
    name, pron, _ = who
    baked, _ = rng.choice(_BAKED)
    boxes, per_box, eaten = rng.randint(2, 8), rng.randint(3, 12), rng.randint(1, 10)
    total = boxes * per_box + eaten
    per_tray = next(p for p in (12, 10, 9, 8, 6, 5, 4, 3, 2, 1) if total % p == 0)
    trays = total // per_tray
    q = rng.choice(
        [
            f"{name} bakes {trays} trays of {baked} with {per_tray} {baked} on each tray. {_cap(pron)} eats {eaten} "
            f"of them and packs the rest equally into {boxes} boxes. How many {baked} go in each box?",
            f"There are {per_tray} {baked} on each of {trays} trays. After {name}'s family eats {eaten}, the rest "
            f"are split evenly into {boxes} bags. How many {baked} are in each bag?",
        ]
    )
    t, made = s.calc(f"{trays}*{per_tray}")
    s.line(f"{name} bakes {t} {baked}.")
    t, left = s.calc(f"{made}-{eaten}")
    s.line(f"After eating some, {t} {baked} are left.")
    t, _ = s.calc(f"{left}/{boxes}")
    s.line(f"Each box gets {t} {baked}.")
    return q


def _t_reading(rng, s, who):
    name, pron, _ = who
    per_day, days = rng.randint(5, 40), rng.randint(2, 9)
    pages = per_day * days + rng.randint(1, 200)
    q = rng.choice(
        [
            f"{name} is reading a {pages}-page book. {_cap(pron)} reads {per_day} pages a day for {days} days. "
            f"How many pages does {pron} still have to read?",
            f"A book has {pages} pages. If {name} reads {per_day} pages every day, how many pages are left "
            f"after {days} days?",
        ]
    )
    t, read = s.calc(f"{per_day}*{days}")
    s.line(f"{name} reads {t} pages.")
    t, _ = s.calc(f"{pages}-{read}")
    s.line(f"There are {t} pages left.")
    return q


def _t_fraction_class(rng, s, who):
    name, _, poss = who
    k = rng.choice([2, 3, 4, 5])
    students = k * rng.randint(4, 10)
    bus = students // k
    walkers = rng.randint(1, students - bus - 1)
    fraction = {2: "half", 3: "one third", 4: "a quarter", 5: "one fifth"}[k]
    q = rng.choice(
        [
            f"There are {students} students in {name}'s class. {_cap(fraction)} of them ride the bus to school, "
            f"{walkers} walk, and the rest come by car. How many students come by car?",
            f"{name}'s school club has {students} members. {_cap(fraction)} of the members play chess, {walkers} "
            f"play cards, and the others paint. How many members paint?",
        ]
    )
    t, first = s.calc(f"{students}/{k}")
    s.line(f"{_cap(fraction)} of the group is {t} students.")
    t, rest = s.calc(f"{students}-{first}")
    s.line(f"That leaves {t} students.")
    t, _ = s.calc(f"{rest}-{walkers}")
    s.line(f"So {t} students are in the last group.")
    return q


def _t_garden(rng, s, who):
    name, pron, _ = who
    plural, _ = rng.choice(_PLANTS)
    rows, per_row = rng.randint(2, 12), rng.randint(3, 15)
    died = rng.randint(1, rows * per_row - 1)
    added = rng.randint(1, 30)
    q = rng.choice(
        [
            f"{name} plants {rows} rows of {plural} with {per_row} in each row. {died} of them die, and then "
            f"{pron} plants {added} more. How many {plural} are in the garden now?",
            f"A garden has {rows} rows with {per_row} {plural} per row. After a storm, {died} are lost. "
            f"{name} buys {added} new ones. How many {plural} does the garden have?",
        ]
    )
    t, planted = s.calc(f"{rows}*{per_row}")
    s.line(f"There were {t} {plural} at first.")
    t, alive = s.calc(f"{planted}-{died}")
    s.line(f"After some died, {t} were left.")
    t, _ = s.calc(f"{alive}+{added}")
    s.line(f"Now there are {t} {plural}.")
    return q


def _t_discount(rng, s, who):
    name, pron, _ = who
    plural, single = rng.choice(_SHOP_ITEMS)
    price = 20 * rng.randint(1, 10)
    percent = rng.choice([10, 20, 25, 50])
    n = rng.randint(2, 6)
    q = rng.choice(
        [
            f"A {single} normally costs ${price}. This week it is {percent}% off. How much does {name} pay "
            f"for {n} {plural}?",
            f"{name} wants {n} {plural}. Each one is priced at ${price}, but the store gives a {percent}% discount. "
            f"How much will {pron} spend?",
        ]
    )
    t, off = s.calc(f"{price}*{percent}/100", money=True)
    s.line(f"The discount is {t} per {single}.")
    t, each = s.calc(f"{price}-{off}", money=True)
    s.line(f"Each {single} costs {t}.")
    t, _ = s.calc(f"{n}*{each}", money=True)
    s.line(f"{name} pays {t}.")
    return q


def _t_comparison(rng, s, who):
    name, _, _ = who
    other, _, _ = rng.choice(NAMES)
    other = other if other != name else "Alex"
    third = rng.choice(["Sam", "Jordan", "Riley", "Casey", "Morgan"])
    items, _ = rng.choice(ITEMS)
    x, more = rng.randint(3, 40), rng.randint(1, 40)
    if (x + more) % 2:
        more += 1
    q = rng.choice(
        [
            f"{name} has {x} {items}. {other} has {more} more {items} than {name}, and {third} has half as many "
            f"as {other}. How many {items} do they have in all?",
            f"{other} owns {more} more {items} than {name}, who owns {x}. {third} owns half as many {items} as "
            f"{other}. What is the total number of {items}?",
        ]
    )
    t, b = s.calc(f"{x}+{more}")
    s.line(f"{other} has {t} {items}.")
    t, c = s.calc(f"{b}/2")
    s.line(f"{third} has {t} {items}.")
    t, _ = s.calc(f"{x}+{b}+{c}")
    s.line(f"In all they have {t} {items}.")
    return q


def _t_minutes(rng, s, who):
    name, pron, _ = who
    show = rng.choice(_SHOWS)
    hours, minutes, times = rng.randint(1, 3), rng.randint(5, 55), rng.randint(2, 4)
    q = rng.choice(
        [
            f"A {show} lasts {hours} hours and {minutes} minutes. {name} watches it {times} times. "
            f"How many minutes does {pron} spend watching?",
            f"{name} watched a {show} that was {hours} hours and {minutes} minutes long, {times} times in a row. "
            f"How many minutes was that?",
        ]
    )
    t, h_min = s.calc(f"{hours}*60")
    s.line(f"{hours} hours is {t} minutes.")
    t, once = s.calc(f"{h_min}+{minutes}")
    s.line(f"The {show} is {t} minutes long.")
    t, _ = s.calc(f"{once}*{times}")
    s.line(f"{name} spends {t} minutes watching.")
    return q


TEMPLATES: tuple[Callable, ...] = (
    _t_half_as_many,
    _t_shopping,
    _t_change,
    _t_sharing,
    _t_distance,
    _t_ages,
    _t_savings,
    _t_wages,
    _t_baking,
    _t_reading,
    _t_fraction_class,
    _t_garden,
    _t_discount,
    _t_comparison,
    _t_minutes,
)
