"""Prompt layout around packets: a preamble before the documents and a query after them, from a chat template.

Full recompute, KV Packet and every baseline see the *same token ids* (preamble, each document, query), so results
differ only by how attention over the documents was computed, never by tokenization at document boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

DEFAULT_INSTRUCTION = "Answer the question using the documents. Reply with a short answer only."
_DOCS, _QUESTION = "\x00DOCS\x00", "\x00QUESTION\x00"


@dataclass(frozen=True)
class PromptTemplate:
    """Text before the documents (`preamble`) and after them (`query_template` with `{question}`).

    Example
    -------
    >>> tpl = PromptTemplate.from_tokenizer(tok, system_prompt="You are a helpful assistant.")
    >>> cache = PacketCache.from_packets(packets, model=model, tokenizer=tok, preamble=tpl.preamble)
    >>> model.generate(**cache.inputs_for(tpl.query("Who wrote it?")), max_new_tokens=32)
    """

    preamble: str
    query_template: str
    document_separator: str = "\n\n"

    @classmethod
    def from_tokenizer(
        cls, tokenizer: Any, system_prompt: str | None = None, instruction: str = DEFAULT_INSTRUCTION
    ) -> "PromptTemplate":
        """Split the tokenizer's chat template around the documents (a plain layout if it has none)."""
        user = f"{instruction}\n\n{_DOCS}Question: {_QUESTION}"
        if getattr(tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                {"role": "user", "content": user}
            ]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = (f"{system_prompt}\n\n" if system_prompt else "") + user + "\nAnswer:"
        before, after = text.split(_DOCS)
        return cls(preamble=before, query_template=after.replace(_QUESTION, "{question}"))

    def query(self, question: str) -> str:
        return self.query_template.replace("{question}", question)

    def document(self, text: str) -> str:
        """A document as it is encoded into a packet (with its trailing separator, so no delimiter token is added)."""
        return text.strip() + self.document_separator

    def token_ids(self, tokenizer: Any, documents: Sequence[str], question: str) -> dict[str, Any]:
        """Token ids of every part: `{"preamble": [...], "documents": [[...], ...], "query": [...]}`."""
        enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        return {"preamble": enc(self.preamble), "documents": [enc(self.document(d)) for d in documents],
                "query": enc(self.query(question))}
