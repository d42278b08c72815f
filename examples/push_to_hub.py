"""Push an adapter to the Hugging Face Hub and load it back.

    HF_TOKEN=hf_... python examples/push_to_hub.py --adapter adapters/smollm2-135m-instruct-mixture --repo me/my-adapter
    python examples/push_to_hub.py --fast      # no network: saves, reloads from the folder, shows the card header

With a token, `push_to_hub` creates the repo (private by default here), uploads config, weights and the generated
model card in one commit, and `from_pretrained(repo)` downloads them through huggingface_hub's cache.
"""

import argparse
import os
import tempfile

import torch

from hf_kvpacket import PacketAdapter
from hf_kvpacket.model_card import read_card_metadata
from hf_kvpacket.testing import example_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--adapter", default=None, help="adapter folder (default: a fresh adapter for the example model)")
    p.add_argument("--repo", default=None, help="Hub repo id, e.g. me/my-kvpacket-adapter")
    p.add_argument("--public", action="store_true")
    p.add_argument("--fast", action="store_true")
    args = p.parse_args()
    if args.adapter:
        adapter = PacketAdapter.from_pretrained(args.adapter)
    else:
        model, _ = example_model(args.fast)
        adapter = PacketAdapter.for_model(model, task="example")
    results = {"biography": {"f1": 0.5}}  # put your measured results here (kvpacket eval)
    if args.repo and os.environ.get("HF_TOKEN"):
        url = adapter.push_to_hub(args.repo, private=not args.public, eval_results=results)
        print("pushed:", url)
        again = PacketAdapter.from_pretrained(args.repo)
    else:
        print("no --repo/HF_TOKEN: saving locally instead of pushing")
        folder = tempfile.mkdtemp()
        adapter.save_pretrained(folder, eval_results=results)
        print("files:", sorted(os.listdir(folder)))
        print("card metadata:", read_card_metadata(os.path.join(folder, "README.md")))
        again = PacketAdapter.from_pretrained(folder)
    assert torch.equal(again.header, adapter.header) and again.fingerprint == adapter.fingerprint
    print("loaded back, fingerprint", again.fingerprint)


if __name__ == "__main__":
    main()
