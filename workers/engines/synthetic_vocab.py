"""A BPE vocabulary that coqui's `VoiceBpeTokenizer` accepts, trained offline.

The released XTTS-v2 `vocab.json` is a `tokenizers` BPE model with a whitespace
pre-tokenizer and added tokens `[STOP]`=0, `[UNK]`=1, `[SPACE]`=2, one `[xx]`
token per language and `[START]`. Its size (6681 ids) fixes the shape of the
GPT's text embedding and text head, so the synthetic checkpoint needs a vocab of
exactly that size. A few paragraphs of English and Portuguese do not hold 6681
distinct merges, so the corpus is topped up with seeded pseudo-words built from
the syllables of those paragraphs; the result is the same on every machine.

Imports `tokenizers` only (no torch), so tests and tools can build it cheaply.
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.trainers import BpeTrainer

FULL_VOCAB_SIZE = 6681
# coqui's XttsConfig.languages, in its order; "zh" is spelled "zh-cn" in the vocab.
LANGUAGES = ("en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi")
SPECIAL_TOKENS = ["[STOP]", "[UNK]", "[SPACE]", *(f"[{lang}]" for lang in LANGUAGES), "[START]"]

# Every character coqui's multilingual cleaners can leave in Latin-script text,
# so ordinary input never maps to [UNK] just because the corpus lacked it.
ALPHABET = list(
    "abcdefghijklmnopqrstuvwxyz0123456789"
    "áàâãäåçéèêëíìîïñóòôõöúùûüýÿœæßøąćęłńśźżčďěňřšťůžğışőű"
    ".,!?;:'\"-()[]¿¡«»…–—/&%$€£@#*+=<>"
)

CORPUS = """
The otherworldly light spilled over us, cold and silver, and for a moment nobody spoke.
Then the old woman raised her lantern and whispered: do you see it?
A quick brown fox jumps over the lazy dog while the children laugh in the garden.
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
Please call me tomorrow morning at nine, before the meeting with the engineers starts.
The weather was warm, the river was quiet, and the boats drifted slowly toward the bridge.
We measured the latency of every request and wrote the results into a small table.
Reading a good book on a rainy afternoon is one of the simplest pleasures in life.
How much wood would a woodchuck chuck if a woodchuck could chuck wood?
The train to the northern city leaves from platform seven in twenty minutes.
Music filled the hall as the orchestra began the second movement of the symphony.
Thank you for waiting; your order has been shipped and will arrive on Thursday.
A luz do outro mundo derramou-se sobre nós, fria e prateada, e por um momento ninguém falou.
Então a velha levantou a lanterna e sussurrou: você consegue ver?
O rápido cachorro marrom pula sobre a raposa preguiçosa enquanto as crianças brincam.
Amanhã de manhã vamos visitar a praia, comer pão de queijo e tomar um café forte.
A cidade acordou devagar, com o cheiro de chuva nas ruas e o som dos ônibus ao longe.
Obrigado pela paciência; o seu pedido foi enviado e chegará na próxima quinta-feira.
As estrelas brilhavam no céu escuro e o vento frio soprava sobre as montanhas.
Ela estudou engenharia, trabalhou em São Paulo e depois mudou-se para Lisboa.
O trem para o norte parte da plataforma sete daqui a vinte minutos.
Coração, canção, avó, avô, lição, pé, café, você, três, órgão, português, açúcar.
"""


def train_vocab(vocab_size: int = FULL_VOCAB_SIZE, pseudo_words: int = 30000, seed: int = 1234) -> Tokenizer:
    """Train the BPE tokenizer; raises if the corpus cannot fill `vocab_size` ids."""
    minimum = len(SPECIAL_TOKENS) + len(ALPHABET)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be >= {minimum} (special tokens + alphabet), got {vocab_size}")
    tokenizer = Tokenizer(BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=ALPHABET,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_lines(pseudo_words, seed), trainer=trainer)
    size = tokenizer.get_vocab_size()
    if size != vocab_size:
        raise RuntimeError(f"BPE training reached {size} ids, not {vocab_size}: the corpus has too few merges")
    return tokenizer


def write_vocab(path: str | Path, vocab_size: int = FULL_VOCAB_SIZE) -> Path:
    path = Path(path)
    path.write_text(train_vocab(vocab_size).to_str(pretty=False), encoding="utf-8")
    return path


def _corpus_lines(pseudo_words: int, seed: int) -> list[str]:
    lines = [line.lower() for line in CORPUS.strip().splitlines()]
    syllables = sorted(_syllables(" ".join(lines)))
    rng = random.Random(seed)
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(pseudo_words)]
    # Real text first and repeated, so its merges rank above the pseudo-words'.
    lines = lines * 20
    lines += [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return lines


def _syllables(text: str) -> set[str]:
    """Consonant cluster + vowel run pieces of the corpus words (a crude syllable split)."""
    vowels = set("aeiouáàâãéêíóôõúü")
    out: set[str] = set()
    for word in text.split():
        word = "".join(ch for ch in word if ch.isalpha())
        piece = ""
        for i, ch in enumerate(word):
            piece += ch
            next_is_vowel = i + 1 < len(word) and word[i + 1] in vowels
            if ch in vowels and not next_is_vowel:
                out.add(piece)
                piece = ""
        if piece and out:
            out.add(piece)
    return out
