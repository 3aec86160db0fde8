#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/corpus/<target>/ from the repository's own
documents: frames from docs/PROTOCOL.md (JSON, and the same frames as MessagePack), the
shipped moderation rules, config/*.toml, and texts that exercise every detector. Run it from
anywhere; it rewrites only files named seed-*. The session target's seeds are fixed pseudo-
random bytes (the target derives a frame sequence from any bytes)."""
import json, os, random, re, struct, glob

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def msgpack(v):
    """A minimal MessagePack encoder (maps, arrays, str, int, bool, None)."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        if 0 <= v < 2**8:
            return b"\xcc" + struct.pack(">B", v)
        if 0 <= v < 2**16:
            return b"\xcd" + struct.pack(">H", v)
        if 0 <= v < 2**32:
            return b"\xce" + struct.pack(">I", v)
        if 0 <= v < 2**64:
            return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, str):
        b = v.encode()
        n = len(b)
        if n < 32:
            return bytes([0xA0 | n]) + b
        if n < 2**8:
            return b"\xd9" + bytes([n]) + b
        if n < 2**16:
            return b"\xda" + struct.pack(">H", n) + b
        return b"\xdb" + struct.pack(">I", n) + b
    if isinstance(v, list):
        n = len(v)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(msgpack(x) for x in v)
    if isinstance(v, dict):
        n = len(v)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(msgpack(k) + msgpack(x) for k, x in v.items())
    raise TypeError(v)


def frames():
    text = open(os.path.join(ROOT, "docs", "PROTOCOL.md"), encoding="utf-8").read()
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('{"type"'):
            try:
                json.loads(line)
            except ValueError:
                continue  # doc examples with "..." placeholders
            out.append(line)
    more = [
        '{"type":"send","client_msg_id":"c1","to":{"user":"bob"},"body":"hi","reply_to":3,"mentions":["bob"]}',
        '{"type":"recall","rid":"r","conv":"group:g1","seq":2}',
        '{"type":"conversations","rid":"c"}',
        '{"type":"sync","rid":"s","cursors":{},"limit":10}',
        '{"type":"history","conv":"group:g1"}',
        '{"type":"pong","rid":"p"}',
        '{"type":"read","conv":"dm:alice:bob","user":"bob","seq":4}',
        '{"type":"recalled","rid":"x","conv":"group:g","seq":1}',
        '{"type":"conversations","conversations":[{"conv":"dm:a:b","last_seq":2,"last_ts":5,"read_seq":1,"unread":1,"mentioned":true}]}',
        '{"type":"history","rid":"h","conv":"dm:a:b","messages":[{"conv":"dm:a:b","seq":1,"id":"m","from":"a","kind":"recalled","body":"","ts":1}],"has_more":true}',
        '{"type":"event","event":"muted","conv":"group:g1","user":"bob","until":1764331200000}',
        # broken ones: the decoder must say why, and keep the rid
        '{"type":"nope","rid":"r9"}',
        '{"type":"send","rid":"r1"}',
        '{"type":"history","conv":"dm:b:a"}',
        '{"type":"ping","rid":7}',
        '{"type":"sync","cursors":{"nope":1}}',
        '{not json',
        '[]',
    ]
    return out + more


def main():
    for i, f in enumerate(frames()):
        put("frame_json", f"{i:02}.json", f)
        try:
            put("frame_msgpack", f"{i:02}.msgpack", msgpack(json.loads(f)))
        except ValueError:
            put("frame_msgpack", f"{i:02}.bin", f)

    # moderation: one flags byte (bit 0: group policy, bit 1: external member), then text.
    texts = [
        "你好，明天十点开会",
        "call me: 138 1234 5678",
        "身份证 11010519491231002X",
        "卡号 6217 0012 3456 7890 123",
        "mail j.doe@example.com please",
        "地址：北京市海淀区中关村大街1号",
        "这是机密文件，严禁外传",
        "f.u.c.k you",
        "Ｆｕｃｋ",
        "法*轮*功",
        "加微信 ❶❸❽ 壹贰叁",
        "三黄片 路口交通",
        "项目甲 launch date",
        "e\u0301\u200b\u202e mixed 😀👍🏽 ㎏ ﬁ",
        "top secret: 傻 逼",
    ]
    for path in sorted(glob.glob(os.path.join(ROOT, "config", "moderation", "deny", "*.txt"))):
        words = [l for l in open(path, encoding="utf-8").read().splitlines()
                 if l.strip() and not l.startswith("#")]
        if words:
            texts.append("消息 " + " ".join(words[:3]) + " end")
    for i, t in enumerate(texts):
        put("moderation", f"{i:02}.txt", bytes([i % 4]) + t.encode())

    # rules: policy.toml, deny/abuse.txt, allow.txt, secrets.txt, code_names.txt,
    # deny/fuzz.txt, group policy JSON, separated by 0xFF.
    rd = os.path.join(ROOT, "config", "moderation")
    def rf(*p):
        return open(os.path.join(rd, *p), "rb").read()
    shipped = [rf("policy.toml"), rf("deny", "abuse.txt"), rf("allow.txt"), rf("secrets.txt"),
               rf("code_names.txt"), rf("deny", "ads.txt")]
    group = json.dumps({"words": ["项目甲", "launch"], "words_action": "mask",
                        "tighten": {"phone": "block"}, "forbid_secret_markers": True}).encode()
    put("rules", "shipped", b"\xff".join(shipped + [group]))
    put("rules", "policy-only", rf("policy.toml"))
    put("rules", "empty-policy", b"\xff" + rf("deny", "porn.txt"))
    put("rules", "word-actions", b"\xff\xe5\x82\xbb\xe9\x80\xbc\tmask\nfoo bar\treview\n# c\n\nbaz\tblock\r\n")
    put("rules", "bad-action", b"\xffword\tnuke\n")
    put("rules", "allow-action", b"\xff\xffphrase\twarn\n")
    put("rules", "bad-utf8", b"\xff\xff\xff\xffok\n\xc3\x28\n")
    put("rules", "bad-ladder", b"[escalation]\nladder = [{ at = 0, penalty = \"mute\" }]\n")
    put("rules", "short-policy", b"[categories]\nabuse = \"warn\"\nnew = { action = \"review\", external = \"block\" }\n[normalize]\nmin_pattern_chars = 1\nseparators = \"\"\n")
    put("rules", "group-unknown", b"\xff\xff\xff\xff\xff\xff" + json.dumps({"tighten": {"nope": "block"}}).encode())

    # config: the shipped files and a few edge cases.
    for name in ["default.toml", "cluster.toml"]:
        put("config", name, open(os.path.join(ROOT, "config", name), "rb").read())
    put("config", "empty.toml", b"")
    put("config", "unknown-key.toml", b"[server]\nlisten_adress = \"x\"\n")
    put("config", "wrong-type.toml", b"[limits]\nmax_frame_bytes = \"big\"\n")
    put("config", "negative.toml", b"[limits]\nsend_per_sec = -1\n")
    put("config", "secret.toml", b"[auth]\njwt_secret = \"0123456789abcdef\"\nadmins = [\"alice\"]\n[router]\nredis_url = \"redis://u:pw@h:1/0\"\n")
    put("config", "dotted.toml", b"server.listen = \"[::1]:0\"\nfiles.allowed_types = []\n")

    # session: fixed pseudo-random bytes.
    rng = random.Random(10)
    for i in range(24):
        n = rng.choice([16, 64, 256, 1024])
        put("session", f"{i:02}.bin", bytes(rng.randrange(256) for _ in range(n)))


if __name__ == "__main__":
    main()
