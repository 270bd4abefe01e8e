"""National and provincial nodes (federation): one card nationwide, records queried across node boundaries.

A node's role comes from EHC_PROVINCE ("00": the national node; a GB/T 2260 code: a province node). Trust is
set up only with `ehc nodes add --province NN --url BASE` (app.cli.nodes): on the national node once per
province, on each province node once for the national node.

- keys.py       this node's ES384 key (the OAuth2 client assertions and requester assertions it signs)
- registry.py   the peer nodes this node trusts (fetched key, fingerprint) and their OAuth clients "node-NN"
- peers.py      calls to a peer: Backend Services token (private_key_jwt, short-lived) + requester assertion
- assertions.py the signed requester assertion (client, organization, province, purpose of use, scopes)
- policy.py     the authenticate hook: a peer node's token + a valid requester assertion becomes the
                original requester's Principal; the ordinary disclosure gate then decides
- index.py      the national cross-domain index (blind index, card ID, home province, node Patients)
- outbox.py     the durable queue of index entries a province node owes the national node
- cards.py      keys and revocations union, QR codes issued at another node, one-time codes across nodes
- search.py     the cross-province part of a search (remote_entries), forwarded through the national node
- web.py        /federation/* endpoints between nodes, /federation/node (public key, for `nodes add`)
- plugin.py     init_app: wiring
"""
