"""Tokenizers built from a GGUF file's `tokenizer.ggml.*` metadata.

`BytePairTokenizer` is GPT-2 style byte-level BPE (`tokenizer.ggml.model == "gpt2"`): text is
split into words by a pre-tokenizer pattern, each word's UTF-8 bytes are mapped to printable
characters and merged by merge rank. `SentencePieceTokenizer` follows llama.cpp's "llama"
(SentencePiece) model: spaces become U+2581, adjacent pieces are merged by score, and characters
outside the vocabulary fall back to `<0xXX>` byte tokens. Both split user-defined tokens out of
the text first, as llama.cpp does; control tokens in the text are not parsed.
"""
import heapq
import re

CONTROL, USER_DEFINED, BYTE = 3, 4, 6
SPACE = "\u2581"

# GPT-2's pre-tokenizer with Python's `re` classes standing in for \p{L} and \p{N}.
_GPT2_WORDS = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")
_DIGIT = re.compile(r"\d")


def _byte_alphabet():
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split_keep(pattern, text):
    """Split `text` into the matches of `pattern` and the (non-empty) stretches between them."""
    pieces, last = [], 0
    for m in pattern.finditer(text):
        if m.start() > last:
            pieces.append(text[last:m.start()])
        if m.end() > m.start():
            pieces.append(m.group())
        last = m.end()
    if last < len(text):
        pieces.append(text[last:])
    return pieces


class _Vocab:
    """What both tokenizer kinds share: the vocabulary and the user-defined token split."""

    def __init__(self, tokens, token_types):
        self.tokens = list(tokens)
        self.types = list(token_types) if token_types is not None else [1] * len(self.tokens)
        self.ids = {}
        for i, t in enumerate(self.tokens):
            self.ids.setdefault(t, i)
        user = sorted({t for t, ty in zip(self.tokens, self.types) if ty == USER_DEFINED and t},
                      key=len, reverse=True)
        self._user = re.compile("|".join(map(re.escape, user))) if user else None

    def fragments(self, text):
        """Yield (is_user_defined_token, fragment) over `text` in order."""
        if self._user is None:
            yield False, text
            return
        last = 0
        for m in self._user.finditer(text):
            if m.start() > last:
                yield False, text[last:m.start()]
            yield True, m.group()
            last = m.end()
        if last < len(text):
            yield False, text[last:]

    def encode(self, text):
        out = []
        for special, frag in self.fragments(text):
            if special:
                out.append(self.ids[frag])
            elif frag:
                out.extend(self.encode_fragment(frag))
        return out


class BytePairTokenizer(_Vocab):
    """Byte-level BPE with ranked merges (GPT-2, SmolLM)."""

    def __init__(self, tokens, token_types, merges, split_digits=False):
        super().__init__(tokens, token_types)
        self.ranks = {}
        for rank, m in enumerate(merges):
            a, b = m.split(" ", 1)
            self.ranks.setdefault((a, b), rank)
        self.byte_char = _byte_alphabet()
        self.char_byte = {c: b for b, c in self.byte_char.items()}
        self.split_digits = split_digits
        self._cache = {}

    def _words(self, text):
        if self.split_digits:
            for piece in _split_keep(_DIGIT, text):
                yield from _split_keep(_GPT2_WORDS, piece)
        else:
            yield from _split_keep(_GPT2_WORDS, text)

    def _bpe(self, word):
        """Token ids of one pre-tokenized word."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = [self.byte_char[b] for b in word.encode("utf-8")]
        while len(parts) > 1:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            pair = (parts[best], parts[best + 1])
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = []
        for p in parts:
            if p in self.ids:
                ids.append(self.ids[p])
            else:
                ids.extend(self.ids[c] for c in p if c in self.ids)
        self._cache[word] = ids
        return ids

    def encode_fragment(self, text):
        out = []
        for w in self._words(text):
            out.extend(self._bpe(w))
        return out

    def decode(self, ids):
        data = bytearray()
        for i in ids:
            i = int(i)
            if self.types[i] == CONTROL:
                continue
            piece = self.tokens[i]
            if self.types[i] == USER_DEFINED:
                data += piece.encode("utf-8")
            else:
                for c in piece:
                    b = self.char_byte.get(c)
                    data += bytes([b]) if b is not None else c.encode("utf-8")
        return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer(_Vocab):
    """SentencePiece-style merging by piece score with byte fallback (llama.cpp's SPM)."""

    def __init__(self, tokens, token_types, scores, add_space_prefix=False):
        super().__init__(tokens, token_types)
        self.scores = list(scores)
        self.add_space_prefix = add_space_prefix
        self.byte_ids = {}
        for i, (t, ty) in enumerate(zip(self.tokens, self.types)):
            if ty == BYTE and len(t) == 6 and t.startswith("<0x"):
                self.byte_ids[int(t[3:5], 16)] = i

    def encode(self, text):
        if self.add_space_prefix and text and not text.startswith(" "):
            text = " " + text
        return super().encode(text)

    def encode_fragment(self, text):
        text = text.replace(" ", SPACE)
        n = len(text)
        if n == 0:
            return []
        size = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        heap = []

        def push(left):
            if left < 0 or nxt[left] >= n:
                return
            right = nxt[left]
            piece = text[left:right + size[right]]
            tid = self.ids.get(piece)
            if tid is not None:
                heapq.heappush(heap, (-self.scores[tid], left, len(piece)))

        for i in range(n - 1):
            push(i)
        while heap:
            _, left, length = heapq.heappop(heap)
            right = nxt[left]
            if size[left] == 0 or right >= n or size[right] == 0 or size[left] + size[right] != length:
                continue
            size[left] += size[right]
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[left] < n:
                prev[nxt[left]] = left
            push(prev[left])
            push(left)

        out = []
        i = 0
        while i < n:
            piece = text[i:i + size[i]]
            tid = self.ids.get(piece)
            if tid is not None:
                out.append(tid)
            else:
                out.extend(self.byte_ids[b] for b in piece.encode("utf-8"))
            i = nxt[i]
        return out

    def decode(self, ids):
        data = bytearray()
        for i in ids:
            i = int(i)
            ty = self.types[i]
            if ty == CONTROL:
                continue
            if ty == BYTE:
                data.append(int(self.tokens[i][3:5], 16))
            else:
                data += self.tokens[i].replace(SPACE, " ").encode("utf-8")
        return data.decode("utf-8", errors="replace")


def from_gguf(fields):
    """Build the tokenizer that a GGUF file's metadata describes; `fields` maps key -> value."""
    kind = fields.get("tokenizer.ggml.model")
    tokens = fields["tokenizer.ggml.tokens"]
    types = fields.get("tokenizer.ggml.token_type")
    if kind == "gpt2":
        pre = fields.get("tokenizer.ggml.pre", "default")
        return BytePairTokenizer(tokens, types, fields["tokenizer.ggml.merges"],
                                 split_digits=pre in ("smollm", "starcoder", "refact"))
    if kind == "llama":
        return SentencePieceTokenizer(tokens, types, fields["tokenizer.ggml.scores"],
                                      bool(fields.get("tokenizer.ggml.add_space_prefix", True)))
    raise ValueError(f"unsupported tokenizer model {kind!r}")
