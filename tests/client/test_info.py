"""``InfoService`` and ``instahide info`` against a real server: what it says is what the server does."""

from __future__ import annotations

import json

import numpy as np
from instahide_client import InstaHideClient
from instahide_client.cli import main

from instahide_ops.audits.membership import membership_attack_names
from instahide_ops.audits.reconstruction import attack_names
from instahide_ops.transforms.instahide.encode import MAX_K


def test_info_describes_the_server_and_agrees_with_what_it_does(server, capsys):
    with InstaHideClient(server.target) as client:
        client.encode(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), num_classes=4)  # builds the 32x32x3 pool
        described = client.server_info()
        keys = client.encode(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), num_classes=4, return_keys=True).keys
    assert described["device"] == "cpu" and described["version"]
    assert described["security"] == {"transport": "plaintext", "token_auth": False, "principals": 0}
    assert [f["name"] for f in described["families"]] == ["instahide", "disguised_nets", "output_defense"]
    k = next(p for p in described["families"][0]["parameters"] if p["name"] == "k")
    assert k["encode_range"] == f"[2, {MAX_K}]" and k["audit_range"].startswith("[3,")
    # the session's server: other tests build pools of other shapes too
    (pool,) = [p for p in described["pools"] if p["image_shape"] == [32, 32, 3]]
    assert pool["images"] > 0
    assert pool["fingerprint"] == keys.pool_fingerprint
    kinds = {kind["name"]: [a["name"] for a in kind["attacks"]] for kind in described["audits"]["kinds"]}
    assert kinds["reconstruction"] == attack_names() and kinds["membership"] == membership_attack_names()
    assert described["limits"]["max_message_bytes"] > 0 and described["audits"]["enabled"]
    assert main(["info", "--target", server.target]) == 0
    shown = capsys.readouterr().out
    assert "transport plaintext, auth none" in shown and "family instahide" in shown and "k = 6" in shown
    assert main(["info", "--target", server.target, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["families"][1]["name"] == "disguised_nets"
