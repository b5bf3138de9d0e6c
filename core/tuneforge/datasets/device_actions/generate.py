"""Write the bundled device-actions dataset: seeded, the same files every time.

    python -m tuneforge.datasets.device_actions.generate [--out DIR]

Each row is one typed command to a meeting and desktop assistant, in the tool-calling
chat format: ``tools`` (the fixed schema of ``schema.py``), a system prompt, the user's
command, and the assistant's answer: ``tool_calls`` (arguments as objects), or, for a
command no tool does, a one-sentence refusal as plain content. ``meta`` names the row's
phenomena and the expected actions.

The phenomena: ``plain`` (a direct command), ``indirect`` (the need said, not the
action: "nobody needs to hear my dog" -> mute), ``two_actions`` (two commands in one
sentence), ``typo`` (letters swapped, dropped, doubled or hit beside, never inside an
argument's value) and ``refusal`` (no tool does it).

``test`` is held out by seed (no command of it is in ``train``). ``hard`` uses
phrasings, wrappers and values (names, files, meetings, messages) that neither
``train`` nor ``test`` has, with more typos and double commands. ``rl`` is drawn as
``train`` is, with no command of the other three: prompts for an online-RL stage
(GRPO) after SFT on ``train``, commands whose answers the SFT model has not learnt.
``holdout`` is drawn as ``test`` is, after the other four and with none of their
commands: 500 more held-out commands, for telling two models apart finely (at the
~85 tool commands of ``test`` one command is 1.2 points of action accuracy, here 0.23).
Each split is drawn after the ones before it, so adding one changes none of them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Callable, Sequence

from .schema import SYSTEM, TOOLS

SPLIT_SIZES = {"train": 360, "test": 100, "hard": 100, "rl": 400, "holdout": 500}
PHENOMENA = ("plain", "indirect", "two_actions", "typo", "refusal")
# The chance of each kind of row, per split: (single plain, single indirect, two actions, refusal), and of a typo.
KIND_WEIGHTS = {"train": (40, 18, 24, 18), "test": (40, 18, 24, 18), "hard": (30, 20, 32, 18), "rl": (40, 18, 24, 18),
                "holdout": (40, 18, 24, 18)}
TYPO_SHARE = {"train": 0.25, "test": 0.25, "hard": 0.45, "rl": 0.25, "holdout": 0.25}

# -- values: (train and test, hard) -------------------------------------------------

PEOPLE = (("Priya", "Tom", "Ana", "Marcus", "Lena", "David", "Sofia", "Kenji", "Grace", "Omar", "Hannah", "Luis"),
          ("Beatriz", "Anders", "Chiamaka", "Dmitri", "Esther", "Farid"))
MEETINGS = (("weekly standup", "design review", "budget sync", "sprint planning", "all hands", "marketing huddle",
             "customer call", "product demo"),
            ("security briefing", "board prep", "vendor demo", "team retro"))
FILES = (("Q3 budget.xlsx", "roadmap.pdf", "onboarding notes.docx", "launch plan.pptx", "team photo.png",
          "contract draft.docx", "sales report.xlsx", "meeting notes.txt"),
         ("hiring plan.xlsx", "postmortem.md", "invoice 2291.pdf", "brand guide.pdf"))
MESSAGES = (("I'm running five minutes late", "the slides are in the shared folder", "can we move our call to Friday",
             "please review the contract today", "lunch is here", "I'll join in a minute", "the build is green again",
             "thanks for the notes"),
            ("the client just landed", "don't forget the invoice", "the demo is moved to noon", "great job on the launch"))
TASKS = (("call the dentist", "send the invoice", "submit my timesheet", "water the plants", "prepare the demo",
          "pick up my badge", "book the train tickets", "email the landlord"),
         ("renew my parking permit", "back up the laptop", "order the new chairs"))
TITLES = (("Budget sync", "Design review", "Hiring debrief", "Launch retro", "Coffee chat", "Roadmap check-in"),
          ("Vendor shortlist", "Quarterly goals", "Pricing workshop"))
ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth"}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 10: "ten", 15: "fifteen", 20: "twenty",
                25: "twenty-five", 30: "thirty", 45: "forty-five", 60: "sixty", 90: "ninety"}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday")

REFUSALS = (
    (("order a pizza for the team", "order food"), ("book me a flight to Lisbon on Friday", "book flights"),
     ("tell me the weather for tomorrow", "check the weather"), ("play some jazz", "play music"),
     ("call me a taxi to the airport", "book a taxi"), ("delete all my emails from last week", "delete emails"),
     ("translate this page into German", "translate text"), ("print the roadmap", "print documents"),
     ("buy a new keyboard on the company card", "buy things"), ("turn off the office lights", "control the lights"),
     ("summarize the last meeting for me", "summarize meetings"), ("restart my laptop", "restart the computer"),
     ("reply to Tom's email", "answer emails"), ("set the thermostat to 21 degrees", "control the thermostat"),
     ("I'm starving, get us some sushi", "order food"), ("what's the capital of Peru?", "answer general questions")),
    (("renew my passport", "handle passports"), ("order a cake for Ana's birthday", "order food"),
     ("find me a cheap hotel in Berlin", "book hotels"), ("change my password", "change passwords"),
     ("leave a voicemail for Esther", "leave voicemails"), ("how tall is the Eiffel tower?", "answer general questions"),
     ("water the office plants", "do things in the physical world")),
)
REFUSAL_ANSWER = "Sorry, I can't {what}: none of my tools does that."

# Wrappers of one clause: (train and test, hard). A clause is lower case, with no final punctuation.
WRAPPERS = (("{c}", "please {c}", "can you {c}?", "{c} please", "hey, {c}", "could you {c} for me?", "I need you to {c}",
             "{c} now"),
            ("any chance you could {c}?", "{c}, thanks", "quick one: {c}", "ok so {c}", "would you {c}", "go ahead and {c}"))
JOINERS = (("{a} and {b}", "{a}, then {b}", "{a} and also {b}", "first {a}, then {b}"),
           ("{a}; after that {b}", "{a} and right after that {b}", "{a} plus {b}"))
# Pairs that make no sense together in one command.
CLASHES = {frozenset(p) for p in (
    ("mute_microphone", "unmute_microphone"), ("start_recording", "stop_recording"), ("share_screen", "stop_screen_share"),
    ("join_meeting", "leave_meeting"), ("set_camera", "set_camera"),
)}


# -- what is said for a value -----------------------------------------------------------


def _time(rng: random.Random, hard: bool) -> tuple[str, str]:
    """(HH:MM, how it is said)."""
    hour = rng.randint(8, 18)
    minute = rng.choice((0, 0, 15, 30, 45))
    value = f"{hour:02d}:{minute:02d}"
    h12, half = (hour - 12 if hour > 12 else hour), ("am" if hour < 12 else "pm")
    forms = [f"at {hour:02d}:{minute:02d}", f"at {h12}:{minute:02d} {half}"]
    if minute == 0:
        forms += [f"at {h12}{half}", f"at {h12} {half}"] + (["at noon"] if hour == 12 else [])
    if hard:
        part = "in the morning" if hour < 12 else "in the afternoon" if hour < 18 else "in the evening"
        forms = [f"at {h12}:{minute:02d}{half}"]
        if minute == 30:
            forms.append(f"at half past {h12} {part}")
        if minute == 15:
            forms.append(f"at quarter past {h12} {part}")
        if minute == 45:
            forms.append(f"at a quarter to {h12 % 12 + 1} {part}")
        if minute == 0:
            forms.append(f"at {NUMBER_WORDS.get(h12, h12)} o'clock {part}" if h12 in NUMBER_WORDS else f"at {h12} o'clock {part}")
    elif minute == 30:
        forms.append(f"at half past {h12}{' in the afternoon' if half == 'pm' else ''}")
    return value, rng.choice(forms)


def _day(rng: random.Random, hard: bool) -> tuple[str, str]:
    day = rng.choice(("today", "tomorrow") + WEEKDAYS)
    if day in ("today", "tomorrow"):
        return day, day
    said = rng.choice((f"this {day.title()}", f"next {day.title()}")) if hard else rng.choice((f"on {day.title()}", day.title()))
    return day, said


def _screen(rng: random.Random, hard: bool) -> tuple[int, str]:
    n = rng.choice((1, 2, 2, 3))
    if hard:
        forms = [f"the {ORDINALS[n]} display", f"display number {n}"]
    else:
        forms = [f"screen {n}", f"my {ORDINALS[n]} screen", f"monitor {n}", f"screen {NUMBER_WORDS[n]}"]
        if n == 1:
            forms.append("my main screen")
    return n, rng.choice(forms)


def _minutes(rng: random.Random, choices: Sequence[int]) -> tuple[int, str]:
    n = rng.choice(choices)
    said = {30: "half an hour", 60: "an hour", 90: "an hour and a half", 120: "two hours"}.get(n)
    return n, said if said and rng.random() < 0.6 else f"{n} minutes"


def _pick(rng: random.Random, pools: tuple, hard: bool) -> str:
    return rng.choice(pools[1] if hard else pools[0])


# -- the tools' phrasings ---------------------------------------------------------------
#
# Each maker draws the arguments and the slot texts: (arguments, slots). A template's
# {slot} is filled with its text, which typos never touch.

Maker = Callable[[random.Random, bool], tuple[dict, dict]]


def _none(rng, hard):
    return {}, {}


def _join(rng, hard):
    meeting = _pick(rng, MEETINGS, hard)
    args, slots = {"meeting": meeting}, {"meeting": meeting}
    video = rng.random()
    if video < 0.25:
        args["with_video"], slots["video"] = False, rng.choice(("with my camera off", "without video"))
    elif video < 0.45:
        args["with_video"], slots["video"] = True, rng.choice(("with video", "with my camera on"))
    else:
        slots["video"] = ""
    return args, slots


def _camera_on(rng, hard):
    return {"enabled": True}, {}


def _camera_off(rng, hard):
    return {"enabled": False}, {}


def _share(rng, hard):
    n, said = _screen(rng, hard)
    args, slots = {"screen": n}, {"screen": said, "audio": ""}
    if rng.random() < 0.25:
        args["with_audio"], slots["audio"] = True, rng.choice(("with sound", "with the audio"))
    return args, slots


def _captions(rng, hard):
    from .schema import LANGUAGES

    if rng.random() < 0.35:
        return {}, {"language": ""}
    language = rng.choice(LANGUAGES)
    return {"language": language}, {"language": language.title()}


def _status(rng, hard):
    status = rng.choice(("available", "busy", "away", "do_not_disturb"))
    said = {"do_not_disturb": "do not disturb"}.get(status, status)
    return {"status": status}, {"status": said}


def _message(rng, hard):
    person, text = _pick(rng, PEOPLE, hard), _pick(rng, MESSAGES, hard)
    args, slots = {"recipient": person, "text": text}, {"person": person, "text": text, "urgently": ""}
    if rng.random() < 0.2:
        args["urgent"], slots["urgently"] = True, "urgently "
    return args, slots


def _reminder(rng, hard):
    task = _pick(rng, TASKS, hard)
    value, said = _time(rng, hard)
    args, slots = {"text": task, "time": value}, {"task": task, "time": said, "day": ""}
    if rng.random() < 0.5:
        args["day"], day_said = _day(rng, hard)
        slots["day"] = f" {day_said}"
    return args, slots


def _room(rng, hard):
    from .schema import ROOMS

    room = rng.choice(ROOMS)
    day, day_said = _day(rng, hard)
    value, said = _time(rng, hard)
    args = {"room": room, "day": day, "time": value}
    slots = {"room": rng.choice((room, f"the {room} room", f"room {room}")), "day": day_said, "time": said, "for": ""}
    if rng.random() < 0.5:
        args["duration_minutes"], length = _minutes(rng, (30, 45, 60, 90, 120))
        slots["for"] = f" for {length}"
    return args, slots


def _schedule(rng, hard):
    title = _pick(rng, TITLES, hard)
    day, day_said = _day(rng, hard)
    value, said = _time(rng, hard)
    args = {"title": title, "day": day, "time": value}
    slots = {"title": title, "day": day_said, "time": said, "with": ""}
    if rng.random() < 0.6:
        people = rng.sample(PEOPLE[1] if hard else PEOPLE[0], rng.choice((1, 2, 2, 3)))
        args["invitees"] = people
        slots["with"] = " with " + (people[0] if len(people) == 1 else ", ".join(people[:-1]) + " and " + people[-1])
    return args, slots


def _file(rng, hard):
    name = _pick(rng, FILES, hard)
    return {"name": name}, {"file": name}


def _volume(rng, hard):
    level = rng.randrange(10, 95, 5)
    return {"level": level}, {"level": str(level)}


def _timer(rng, hard):
    n, said = _minutes(rng, (5, 10, 15, 20, 25, 30, 45, 60))
    return {"minutes": n}, {"length": said}


# tool -> (maker, [plain clauses], [indirect sentences], [hard clauses], [hard indirect sentences]).
# A tool used with several makers (the camera) has one entry per maker, keyed "name/variant".
PHRASINGS: dict[str, tuple[Maker, tuple, tuple, tuple, tuple]] = {
    "join_meeting": (_join, ("join the {meeting}{video}", "get me into the {meeting}{video}", "connect me to the {meeting}{video}"),
                     ("I'm late for the {meeting}, put me in it", "they already started the {meeting} without me"),
                     ("hop into the {meeting}{video}", "dial me into the {meeting}{video}"),
                     ("everyone is waiting for me in the {meeting}",)),
    "leave_meeting": (_none, ("leave the meeting", "hang up", "get me out of this call", "end the call for me"),
                      ("I have to run, drop me from this call", "I'm done here, take me out of the meeting"),
                      ("bail out of this meeting", "disconnect me from the call"),
                      ("this call is going nowhere and I need to go",)),
    "mute_microphone": (_none, ("mute me", "mute my microphone", "turn off my mic", "mute my mic"),
                        ("my dog is barking, nobody needs to hear that", "I need to cough, make sure they can't hear me",
                         "there's a lot of noise behind me right now"),
                        ("kill my mic", "silence my microphone"),
                        ("the construction outside is so loud, don't let them hear it",)),
    "unmute_microphone": (_none, ("unmute me", "unmute my microphone", "turn my mic back on", "turn on my mic"),
                          ("I want to say something but they can't hear me", "they're asking me a question and I'm on mute"),
                          ("give me my mic back", "switch my microphone on again"),
                          ("it's my turn to present and nobody hears me",)),
    "set_camera/on": (_camera_on, ("turn my camera on", "start my video", "switch on my camera"),
                      ("they want to see my face", "I'm presentable now, show me"),
                      ("enable my webcam",), ("people keep asking to see me",)),
    "set_camera/off": (_camera_off, ("turn my camera off", "stop my video", "switch off my camera"),
                       ("I look terrible today, hide my video", "I'm eating, don't show me"),
                       ("disable my webcam",), ("my room is a mess, nobody should see it",)),
    "share_screen": (_share, ("share {screen}{audio}", "share my screen, {screen}{audio}", "put {screen} up for everyone{audio}",
                              "present {screen}{audio}"),
                     ("I want everyone to see what's on {screen}",),
                     ("cast {screen} to the meeting{audio}", "show {screen} to the room{audio}"),
                     ("the team should be looking at {screen} right now",)),
    "stop_screen_share": (_none, ("stop sharing my screen", "stop the screen share", "stop presenting"),
                          ("I'm done presenting, take my screen down",),
                          ("end my screen share", "unshare my screen"),
                          ("they've seen enough of my desktop",)),
    "start_recording": (_none, ("start recording", "record this meeting", "start the recording"),
                        ("we should have a copy of this call for the people who missed it",),
                        ("begin recording the call", "hit record"),
                        ("Ana couldn't make it, so keep a recording of this for her",)),
    "stop_recording": (_none, ("stop recording", "stop the recording", "end the recording"),
                       ("the rest is off the record",),
                       ("cut the recording", "finish the recording"),
                       ("this next part shouldn't be on tape",)),
    "raise_hand": (_none, ("raise my hand", "put my hand up"),
                   ("I have a question for the speaker",),
                   ("flag that I want to speak",), ("I'd like a turn to talk",)),
    "enable_captions": (_captions, ("turn on {language} captions", "enable {language} subtitles", "show {language} captions"),
                        ("I can't follow what they're saying, put the words on screen",),
                        ("switch on live {language} captions", "give me {language} subtitles"),
                        ("the audio is awful, I need to read along",)),
    "set_status": (_status, ("set my status to {status}", "mark me as {status}", "change my status to {status}"),
                   (), ("put me on {status}", "flip my status to {status}"), ()),
    "send_message": (_message, ("{urgently}send {person} a message saying \"{text}\"", "{urgently}message {person}: {text}",
                                "{urgently}text {person} \"{text}\"", "{urgently}tell {person} in chat: {text}"),
                     (), ("{urgently}ping {person} with \"{text}\"", "{urgently}drop {person} a note: {text}"), ()),
    "set_reminder": (_reminder, ("remind me to {task}{day} {time}", "set a reminder to {task}{day} {time}",
                                 "set a reminder{day} {time} to {task}"),
                     ("I always forget to {task}, nudge me{day} {time}",),
                     ("ping me{day} {time} about this: {task}", "don't let me forget to {task}{day} {time}"),
                     ()),
    "book_room": (_room, ("book {room} {day} {time}{for}", "reserve {room} {day} {time}{for}",
                          "get me {room} {day} {time}{for}"),
                  (), ("grab {room} {day} {time}{for}", "hold {room} {day} {time}{for}"), ()),
    "schedule_meeting": (_schedule, ("schedule a meeting called {title} {day} {time}{with}",
                                     "put {title} in the calendar {day} {time}{with}",
                                     "set up a meeting named {title} {day} {time}{with}"),
                         (), ("pencil in {title} {day} {time}{with}",), ()),
    "open_file": (_file, ("open {file}", "open the file {file}", "pull up {file}", "bring up {file}"),
                  ("I need to look at {file}",), ("fire up {file}", "load {file}"), ("let me see {file}",)),
    "set_volume": (_volume, ("set the volume to {level}", "volume {level} percent", "change the volume to {level}%"),
                   (), ("put the sound at {level}", "make the speakers {level} percent"), ()),
    "start_timer": (_timer, ("start a countdown of {length}", "set a timer for {length}", "start a timer for {length}"),
                    ("let's timebox this to {length}",),
                    ("count down {length}",), ("give us {length} on the clock",)),
}
TOOL_OF = {key: key.split("/")[0] for key in PHRASINGS}


# -- typos ------------------------------------------------------------------------------

_NEIGHBOURS = dict(zip("qwertyuiopasdfghjklzxcvbnm", "wertyuiopqsdfghjklaxcvbnmz"))


def _typo(rng: random.Random, word: str) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("swap", "drop", "double", "near"))
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    return word[:i] + _NEIGHBOURS.get(word[i].lower(), word[i]) + word[i + 1 :]


def _fill(rng: random.Random, template: str, slots: dict, typos: int) -> tuple[str, int]:
    """The template with its slots filled; ``typos`` words outside the slots misspelt. Returns (text, typos made)."""
    parts = re.split(r"(\{\w+\})", template)
    candidates = [
        (k, m.start(), m.group())
        for k, part in enumerate(parts)
        if not part.startswith("{")
        for m in re.finditer(r"[A-Za-z]{4,}", part)
    ]
    chosen = rng.sample(candidates, min(typos, len(candidates)))
    for k, start, word in sorted(chosen, key=lambda c: (c[0], -c[1])):
        misspelt = _typo(rng, word)
        parts[k] = parts[k][:start] + misspelt + parts[k][start + len(word) :]
    text = "".join(slots[p[1:-1]] if p.startswith("{") else p for p in parts)
    return " ".join(text.split()).replace(" ,", ","), len(chosen)


def _finish(rng: random.Random, text: str) -> str:
    if rng.random() < 0.55:
        text = text[0].upper() + text[1:]
    if not text.endswith("?") and rng.random() < 0.35:
        text += rng.choice((".", "!"))
    return text


# -- rows -------------------------------------------------------------------------------


def _call(name: str, arguments: dict) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _row(command: str, calls: list[dict] | None, refusal: str | None) -> dict:
    answer = {"role": "assistant", "content": refusal} if refusal else {"role": "assistant", "content": "", "tool_calls": calls}
    return {
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": command}, answer],
        "tools": TOOLS,
    }


def make_row(rng: random.Random, split: str) -> tuple[str, dict, list[str]]:
    """One command of ``split``: (command, row without meta, phenomena)."""
    hard = split == "hard"
    which = 1 if hard else 0
    kind = rng.choices(("plain", "indirect", "two_actions", "refusal"), weights=KIND_WEIGHTS[split])[0]
    typos = rng.choice((1, 1, 2)) if rng.random() < TYPO_SHARE[split] else 0
    phenomena = [kind]

    def clause(key: str, indirect: bool) -> tuple[str, dict, int]:
        maker, plain, sentences, hard_plain, hard_sentences = PHRASINGS[key]
        templates = (hard_sentences if hard else sentences) if indirect else (hard_plain if hard else plain)
        template = rng.choice(templates)
        for _ in range(100):  # every value drawn must be said: draw again while one has no place in the template
            arguments, slots = maker(rng, hard)
            if all(f"{{{name}}}" in template for name, said in slots.items() if said):
                break
        else:
            raise RuntimeError(f"no arguments fit the template {template!r}")
        text, made = _fill(rng, template, slots, typos)
        return text, _call(TOOL_OF[key], arguments), made

    made = 0
    if kind == "refusal":
        said, what = rng.choice(REFUSALS[which])
        text, made = _fill(rng, said if said[-1] in "?" or "," in said else rng.choice(WRAPPERS[which]).format(c=said), {}, typos)
        row = _row(_finish(rng, text), None, REFUSAL_ANSWER.format(what=what))
    elif kind == "indirect":
        key = rng.choice([k for k, v in PHRASINGS.items() if (v[4] if hard else v[2])])
        text, call, made = clause(key, True)
        row = _row(_finish(rng, text), [call], None)
    elif kind == "plain":
        text, call, made = clause(rng.choice(list(PHRASINGS)), False)
        row = _row(_finish(rng, rng.choice(WRAPPERS[which]).format(c=text)), [call], None)
    else:
        first = rng.choice(list(PHRASINGS))
        second = rng.choice([k for k in PHRASINGS if frozenset((TOOL_OF[first], TOOL_OF[k])) not in CLASHES and TOOL_OF[k] != TOOL_OF[first]])
        text_a, call_a, made_a = clause(first, False)
        text_b, call_b, made_b = clause(second, False)
        made = made_a + made_b
        joined = rng.choice(JOINERS[which]).format(a=text_a, b=text_b)
        row = _row(_finish(rng, rng.choice(WRAPPERS[which][:4]).format(c=joined) if rng.random() < 0.4 else joined), [call_a, call_b], None)
    if made:
        phenomena.append("typo")
    return row["messages"][1]["content"], row, phenomena


def make_rows(split: str, count: int, taken: set[str] | None = None) -> list[dict]:
    """``count`` rows of ``split``; a command already in ``taken`` (the earlier splits') is drawn again."""
    taken = set() if taken is None else taken
    rows: list[dict] = []
    index = 0
    while len(rows) < count:
        rng = random.Random(f"device-actions/{split}/{index}")
        index += 1
        command, row, phenomena = make_row(rng, split)
        if command.casefold() in taken:
            continue
        taken.add(command.casefold())
        final = row["messages"][-1]
        actions = [call["function"]["name"] for call in final.get("tool_calls") or ()]
        row["meta"] = {"id": f"{split}-{len(rows):04d}", "split": split, "phenomena": phenomena, "actions": actions}
        rows.append(row)
    return rows


def write(directory: str | Path) -> dict[str, Path]:
    """Write every split's ``SPLIT.jsonl`` (``SPLIT_SIZES``, in order) into ``directory``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    taken: set[str] = set()
    for split, count in SPLIT_SIZES.items():
        path = directory / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            for row in make_rows(split, count, taken):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        written[split] = path
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the device-actions dataset (the same files every time).")
    parser.add_argument("--out", default=str(Path(__file__).parent), help="Directory for the split files (default: the package's own).")
    args = parser.parse_args(argv)
    for split, path in write(args.out).items():
        print(f"Wrote {SPLIT_SIZES[split]} {split} rows to {path}")


if __name__ == "__main__":
    main()
