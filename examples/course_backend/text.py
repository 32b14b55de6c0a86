"""TextVectorization of the course assignment: raw strings -> token ids, as Keras does it.

1. lowercase A-Z (only ASCII: TensorFlow's ``tf.strings.lower`` leaves other letters as they are);
2. delete the punctuation characters of Keras' regex ``[!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~']``;
3. split on runs of ASCII whitespace;
4. look each word up in the saved vocabulary (id 0 is padding, 1 is ``[UNK]`` for unknown words);
5. cut or pad with 0 to ``output_sequence_length``.
"""
from __future__ import annotations

import re

import numpy as np

PUNCTUATION = re.compile(r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']')
WHITESPACE = re.compile(r"[ \t\n\r\x0b\x0c]+")
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class TextVectorization:
    def __init__(self, config, vocabulary_file: bytes):
        wanted = {"standardize": "lower_and_strip_punctuation", "split": "whitespace", "output_mode": "int",
                  "ngrams": None}
        for option, value in wanted.items():
            if config.get(option) != value:
                raise NotImplementedError(f"TextVectorization: only {option}={value!r} is implemented")
        if not isinstance(config.get("output_sequence_length"), int):
            raise NotImplementedError("TextVectorization: output_sequence_length must be set")
        self.length = config["output_sequence_length"]
        words = vocabulary_file.decode("utf-8").splitlines()
        while words and words[-1] == "":
            words.pop()
        self.index = {word: i for i, word in enumerate(words)}

    def words(self, text: str) -> list[str]:
        text = PUNCTUATION.sub("", text.translate(ASCII_LOWER))
        return [w for w in WHITESPACE.split(text) if w]

    def forward(self, texts, mask=None):
        ids = np.zeros((len(texts), self.length), dtype=np.int64)
        for n, text in enumerate(texts):   # one text at a time: tokenizing is string work
            row = [self.index.get(w, 1) for w in self.words(str(text))[:self.length]]
            ids[n, :len(row)] = row
        return ids, None
