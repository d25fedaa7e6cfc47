"""Byte-level tokenizer: 256 byte tokens plus one end-of-text token (id 256).

Exact round trip for any UTF-8 text: encode is text.encode("utf-8"), decode the inverse.
A decode of a byte sequence cut in the middle of a character shows U+FFFD there.
"""
import numpy as np

from ..checks import as_int_array, check_range


class ByteTokenizer:
    vocab_size = 257
    eot_id = 256

    def encode(self, text, add_eot=False):
        ids = list(text.encode("utf-8"))
        if add_eot:
            ids.append(self.eot_id)
        return np.array(ids, dtype=np.int64)

    def decode(self, ids, stop_at_eot=False):
        ids = as_int_array("ids", ids, ndim=1)
        check_range("ids", ids, 0, self.vocab_size)
        if stop_at_eot and (ids == self.eot_id).any():
            ids = ids[:int(np.argmax(ids == self.eot_id))]
        return bytes(int(i) for i in ids if i != self.eot_id).decode("utf-8", errors="replace")

    def token_str(self, i):
        """One token, printable and quoted: 'a', ' ', '\\n', '\\xc3' (one byte of a UTF-8
        character), <|eot|>."""
        i = int(i)
        if i == self.eot_id:
            return "<|eot|>"
        if 32 <= i < 127:
            return repr(chr(i))
        return "'" + repr(bytes([i]))[2:-1] + "'"       # b'\xc3' -> '\xc3'
