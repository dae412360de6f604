"""Generated text for the voices to read beside the book sentences: what people say to a device.

Two kinds, each a pure function of a seeded generator:
- **everyday sentences** with numbers, times, dates, money, phone numbers and names (the things
  WordNet's usage examples and fortunes lack), written the way Whisper writes them ("5:30", "$12",
  "March 3, 1998"); the voices read digits as words;
- **short commands** of one to three words (commands, numbers, names, directions), the utterances a
  streaming recogniser hears most and a model trained on long sentences mishears most.
"""
from __future__ import annotations

import numpy as np

NAMES = ("Maria", "James", "Aisha", "Chen", "Olivia", "Mohammed", "Sofia", "Liam", "Priya", "Noah", "Emma", "Diego",
         "Hannah", "Kenji", "Grace", "Omar", "Lucy", "Ivan", "Fatima", "Daniel", "Zoe", "Samuel", "Nina", "Victor",
         "Rachel", "Ahmed", "Clara", "Peter", "Yuki", "George", "Amara", "Thomas", "Elena", "Ravi", "Julia", "Oscar")
SURNAMES = ("Smith", "Garcia", "Nguyen", "Patel", "Johnson", "Kowalski", "Okafor", "Brown", "Rossi", "Kim",
            "Anderson", "Martin", "Silva", "Murphy", "Schmidt", "Lee", "Walker", "Hughes", "Cohen", "Turner")
PLACES = ("Boston", "Denver", "London", "Chicago", "Seattle", "Dublin", "Toronto", "Austin", "Paris", "Berlin",
          "Madrid", "Sydney", "Atlanta", "Phoenix", "Oslo", "Vienna", "Portland", "Miami", "Houston", "Glasgow")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
THINGS = ("boxes", "tickets", "apples", "chairs", "books", "bottles", "letters", "cups", "shirts", "keys")
STREETS = ("Main", "Oak", "Maple", "Park", "Church", "Elm", "Lake", "Hill", "Station", "River")
UNITS = (("degrees", 0, 40), ("miles", 2, 90), ("pounds", 1, 60), ("minutes", 2, 59), ("percent", 1, 99),
         ("kilometers", 1, 120), ("people", 2, 500), ("dollars", 5, 900))

TEMPLATES = (
    "{name} will call you back at {time} on {weekday}.",
    "The meeting moved to {time} on {month} {day}.",
    "Please send the report to {name} {surname} before {weekday}.",
    "My number is {phone}.",
    "It happened on {month} {day}, {year}.",
    "The train to {place} leaves at {time} from platform {small}.",
    "{name} paid {money} for {count} {thing}.",
    "We are meeting {name} at {house} {street} Street.",
    "The temperature dropped to {amount} overnight.",
    "Flight {flight} to {place} is now boarding at gate {gate}.",
    "Can you remind me to call {name} on {weekday} at {time}?",
    "Turn to page {page} and read the first {small} lines.",
    "The total comes to {money}, including tax.",
    "{name} {surname} was born in {place} in {year}.",
    "Set a timer for {small} minutes.",
    "There were about {amount} at the station this morning.",
    "Order number {order} ships on {month} {day}.",
    "Drive {amount} north and then turn left.",
    "I think {name} and {name2} went to {place} last {weekday}.",
    "Room {room} is on the {ordinal} floor.",
)

COMMANDS = ("stop", "start", "pause", "play", "next", "previous", "yes", "no", "cancel", "okay", "help", "undo",
            "go back", "turn left", "turn right", "go forward", "volume up", "volume down", "lights on",
            "lights off", "call home", "play music", "next song", "open the door", "close the window",
            "what time is it", "set an alarm", "take a picture", "read my messages", "skip this one",
            "louder please", "repeat that", "scroll down", "zoom in", "good morning", "thank you very much")
DIRECTIONS = ("north", "south", "east", "west", "left", "right", "up", "down", "front", "rear", "center", "side")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


def everyday_sentence(rng: np.random.Generator) -> str:
    """One sentence of TEMPLATES with its blanks drawn from ``rng``."""
    template = str(rng.choice(TEMPLATES))
    name, name2 = rng.choice(NAMES, 2, replace=False)
    unit, low, high = UNITS[int(rng.integers(len(UNITS)))]
    values = {
        "name": name, "name2": name2, "surname": rng.choice(SURNAMES), "place": rng.choice(PLACES),
        "weekday": rng.choice(WEEKDAYS), "month": rng.choice(MONTHS), "day": int(rng.integers(1, 29)),
        "year": int(rng.integers(1950, 2031)), "time": _time(rng), "money": _money(rng), "phone": _phone(rng),
        "count": int(rng.integers(2, 13)), "thing": rng.choice(THINGS), "house": int(rng.integers(1, 2000)),
        "street": rng.choice(STREETS), "amount": f"{int(rng.integers(low, high + 1))} {unit}",
        "flight": int(rng.integers(100, 1000)), "gate": f"{chr(65 + int(rng.integers(6)))}{int(rng.integers(1, 30))}",
        "small": int(rng.integers(2, 13)), "page": int(rng.integers(3, 400)), "order": int(rng.integers(10000, 99999)),
        "room": int(rng.integers(100, 999)), "ordinal": rng.choice(ORDINALS),
    }
    return template.format(**values)


def short_command(rng: np.random.Generator) -> str:
    """One to three words: a command, a number, a name or a direction, written as Whisper writes it."""
    kind = int(rng.integers(4))
    if kind == 0:
        text = str(rng.choice(COMMANDS))
    elif kind == 1:
        text = str(int(rng.choice([rng.integers(0, 20), rng.integers(20, 100), rng.integers(100, 1000)])))
    elif kind == 2:
        text = str(rng.choice(NAMES)) + (f" {rng.choice(SURNAMES)}" if rng.random() < 0.5 else "")
    else:
        first, second = rng.choice(DIRECTIONS, 2, replace=False)
        text = f"{first} {second}" if rng.random() < 0.6 else str(first)
    text = text[0].upper() + text[1:]
    return text + str(rng.choice([".", "?", "!"], p=[0.8, 0.1, 0.1]))


def _time(rng: np.random.Generator) -> str:
    hour, minute = int(rng.integers(1, 13)), int(rng.choice([0, 15, 30, 45, int(rng.integers(0, 60))]))
    return f"{hour}:{minute:02d}" + str(rng.choice(["", " a.m.", " p.m."]))


def _money(rng: np.random.Generator) -> str:
    dollars = int(rng.choice([rng.integers(1, 20), rng.integers(20, 200), rng.integers(200, 5000)]))
    return f"${dollars}" if rng.random() < 0.6 else f"${dollars}.{int(rng.integers(1, 100)):02d}"


def _phone(rng: np.random.Generator) -> str:
    digits = "".join(str(d) for d in rng.integers(0, 10, 10))
    return f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"
