"""Built-in templates (an internal plugin)."""

from tuneforge import hookimpl
from tuneforge.records import ChatTemplate


def _build_default(tokenizer):
    from tuneforge.templates import HFChatTemplate

    return HFChatTemplate(tokenizer)


def _build_chatml(tokenizer):
    from tuneforge.templates import CHATML

    return CHATML.build(tokenizer)


def _build_llama3(tokenizer):
    from tuneforge.templates import LLAMA3

    return LLAMA3.build(tokenizer)


@hookimpl
def tuneforge_chat_templates():
    yield ChatTemplate(
        name="default",
        description="The tokenizer's own chat template (apply_chat_template), assistant turns learned",
        build=_build_default,
    )
    yield ChatTemplate(
        name="chatml",
        description="<|im_start|>role ... <|im_end|>, no default system prompt",
        build=_build_chatml,
    )
    yield ChatTemplate(
        name="llama3",
        description="Llama 3 headers: <|start_header_id|>role<|end_header_id|> ... <|eot_id|>",
        build=_build_llama3,
    )
