"""The fixed tool schema of device-actions: the 19 actions of a meeting and desktop assistant.

``TOOLS`` is the list every row carries as its ``tools`` (OpenAI function descriptions
with JSON-schema parameters); ``SYSTEM`` is every row's system prompt. The schema is
kept terse: every row carries it, so its tokens are paid on every training step. A
tool takes no argument it does not define (``tuneforge.toolcalls`` checks arguments
as closed objects, as strict function calling does).
"""

from __future__ import annotations

SYSTEM = (
    "You control a meeting and desktop app. Answer each command with calls to the tools. "
    "When no tool does what is asked, call none and say so in one sentence."
)

DAYS = ("today", "tomorrow", "monday", "tuesday", "wednesday", "thursday", "friday")
ROOMS = ("Aurora", "Birch", "Cedar", "Delta", "Ember", "Fjord")
STATUSES = ("available", "busy", "away", "do_not_disturb")
LANGUAGES = ("english", "spanish", "french", "german", "japanese")
TIME_PATTERN = "^[0-2][0-9]:[0-5][0-9]$"  # HH:MM


def _tool(name: str, description: str, properties: dict | None = None, required: tuple = ()) -> dict:
    parameters = {"type": "object", "properties": properties or {}}
    if required:
        parameters["required"] = list(required)
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def _time() -> dict:
    return {"type": "string", "pattern": TIME_PATTERN}


_DAY = {"type": "string", "enum": list(DAYS)}

TOOLS: list[dict] = [
    _tool("join_meeting", "Join a meeting.", {
        "meeting": {"type": "string"},
        "with_video": {"type": "boolean"},
    }, ("meeting",)),
    _tool("leave_meeting", "Leave the current meeting."),
    _tool("mute_microphone", "Mute my microphone."),
    _tool("unmute_microphone", "Unmute my microphone."),
    _tool("set_camera", "Turn my camera on or off.", {"enabled": {"type": "boolean"}}, ("enabled",)),
    _tool("share_screen", "Share a screen in the meeting.", {
        "screen": {"type": "integer", "minimum": 1, "maximum": 4, "description": "1 is the main screen"},
        "with_audio": {"type": "boolean"},
    }, ("screen",)),
    _tool("stop_screen_share", "Stop sharing my screen."),
    _tool("start_recording", "Start recording the meeting."),
    _tool("stop_recording", "Stop recording the meeting."),
    _tool("raise_hand", "Raise my hand in the meeting."),
    _tool("enable_captions", "Turn on live captions.", {"language": {"type": "string", "enum": list(LANGUAGES)}}),
    _tool("set_status", "Set my chat status.", {"status": {"type": "string", "enum": list(STATUSES)}}, ("status",)),
    _tool("send_message", "Send a chat message.", {
        "recipient": {"type": "string"},
        "text": {"type": "string"},
        "urgent": {"type": "boolean"},
    }, ("recipient", "text")),
    _tool("set_reminder", "Set a reminder.", {
        "text": {"type": "string"},
        "time": _time(),
        "day": _DAY,
    }, ("text", "time")),
    _tool("book_room", "Book a meeting room.", {
        "room": {"type": "string", "enum": list(ROOMS)},
        "day": _DAY,
        "time": _time(),
        "duration_minutes": {"type": "integer", "minimum": 15, "maximum": 480},
    }, ("room", "day", "time")),
    _tool("schedule_meeting", "Put a meeting in the calendar.", {
        "title": {"type": "string"},
        "day": _DAY,
        "time": _time(),
        "invitees": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    }, ("title", "day", "time")),
    _tool("open_file", "Open a file.", {"name": {"type": "string"}}, ("name",)),
    _tool("set_volume", "Set the speaker volume.", {"level": {"type": "integer", "minimum": 0, "maximum": 100}}, ("level",)),
    _tool("start_timer", "Start a countdown timer.", {"minutes": {"type": "integer", "minimum": 1, "maximum": 180}}, ("minutes",)),
]

TOOL_NAMES = tuple(tool["function"]["name"] for tool in TOOLS)
