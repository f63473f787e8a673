"""Multimodal RAG with Mirante and LangChain: a question, Mirante retrieves the images whose
contents match it with their captions, and a vision chat model gets one message holding the
question, each caption and each image itself.

    python examples/python/multimodal_rag.py "which scenes have a red circle?" \\
        [--db shapes-rag] [--k 3] [--llm openai:gpt-4o]

The database (`--db`) is made on first use from the bundled shapes dataset. Without `--llm` a
stand-in model (LangChain's fake chat model) answers with what it was shown, so the example runs
offline; `--llm provider:model` uses a real one (`openai`, `anthropic`, `google` or `ollama`;
install its LangChain package, e.g. `pip install langchain-openai`, and set its API key).

Needs the `mirante` package with its LangChain extra (`pip install ./bindings/python[langchain]`)
and the `mirante` command-line tool, which renders the dataset (`MIRANTE_BIN`, else `mirante` on
the PATH, else this repository's `target/release/mirante` or `target/debug/mirante`).
"""

from __future__ import annotations

import argparse
import base64
import importlib
import io
import sys
from pathlib import Path

import mirante
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from mirante.langchain import MiranteVectorStore
from PIL import Image
from shapes_data import render_shapes

#: `--llm` providers: the LangChain package and chat model class of each.
PROVIDERS = {
    "openai": ("langchain_openai", "ChatOpenAI"),
    "anthropic": ("langchain_anthropic", "ChatAnthropic"),
    "google": ("langchain_google_genai", "ChatGoogleGenerativeAI"),
    "ollama": ("langchain_ollama", "ChatOllama"),
}

SYSTEM = (
    "You answer questions about a photo archive. Use only the images and captions given; "
    "cite them by their numbers."
)


def open_store(path: Path, rows: int = 200) -> MiranteVectorStore:
    """The store on collection `shapes` of database `path`, which is made from the bundled
    dataset (`rows` scenes) when missing."""
    fresh = not path.exists()
    db = mirante.connect(path, progress=False)
    if fresh:
        data = path / "dataset"
        render_shapes(data, rows, quiet=True)
        db.sql(f"CREATE COLLECTION shapes; IMPORT INTO shapes FROM '{data}'")
    return MiranteVectorStore(db, "shapes", with_images=True)


def image_block(document: Document) -> dict[str, str]:
    """The document's stored image as a LangChain image content block."""
    data = document.metadata["image_base64"]
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        mime_type = image.get_format_mimetype() or "image/png"
    return {"type": "image", "base64": data, "mime_type": mime_type}


def build_messages(question: str, documents: list[Document]) -> list[BaseMessage]:
    """The messages a vision chat model takes: the question, then per retrieved row its number
    and captions as a text part and its image as an image part."""
    content: list[str | dict] = [{"type": "text", "text": f"Question: {question}"}]
    for number, document in enumerate(documents, start=1):
        caption = document.page_content or "(no caption)"
        content.append({"type": "text", "text": f"[{number}] {caption}"})
        content.append(image_block(document))
    return [SystemMessage(content=SYSTEM), HumanMessage(content=content)]


def answer(
    llm: BaseChatModel, store: MiranteVectorStore, question: str, k: int = 3
) -> tuple[str, list[Document]]:
    """Retrieves `k` rows for `question` and asks `llm`; its answer and the rows."""
    documents = store.similarity_search(question, k=k)
    reply = llm.invoke(build_messages(question, documents))
    return str(reply.content), documents


def chat_model(spec: str | None) -> BaseChatModel:
    """`provider:model` as a LangChain chat model; without one, an offline stand-in."""
    if spec is None:
        return FakeListChatModel(
            responses=["(stand-in model: pass --llm provider:model for a real answer)"]
        )
    provider, _, model = spec.partition(":")
    if provider not in PROVIDERS or not model:
        sys.exit(
            f"--llm takes provider:model with a provider of {', '.join(PROVIDERS)}"
        )
    package, name = PROVIDERS[provider]
    try:
        module = importlib.import_module(package)
    except ImportError:
        sys.exit(f"--llm {provider} needs `pip install {package.replace('_', '-')}`")
    return getattr(module, name)(model=model)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("question")
    parser.add_argument("--db", type=Path, default=Path("shapes-rag"))
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--llm", help="provider:model, e.g. openai:gpt-4o")
    args = parser.parse_args(argv)
    store = open_store(args.db)
    reply, documents = answer(chat_model(args.llm), store, args.question, args.k)
    for number, document in enumerate(documents, start=1):
        print(f"[{number}] {document.metadata['image']}: {document.page_content}")
    print(f"\n{reply}")
    return reply


if __name__ == "__main__":
    main()
