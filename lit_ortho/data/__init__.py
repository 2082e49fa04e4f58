"""Data: litdata token streams for GPT-2 and litdata image sets for ConvNeXt, with offline built-ins."""

from lit_ortho.data._common import DataError, cache_root
from lit_ortho.data.images import IMAGE_DATASETS, ImageDataModule, prepare_builtin_images, prepare_images, scan_image_folder
from lit_ortho.data.text import TextDataModule, find_text_files, prepare_embedded_text, prepare_text
from lit_ortho.data.tokenizers import TOKENIZERS, ByteTokenizer, TiktokenTokenizer, get_tokenizer

__all__ = [
    "TextDataModule",
    "ImageDataModule",
    "prepare_text",
    "prepare_images",
    "prepare_embedded_text",
    "prepare_builtin_images",
    "find_text_files",
    "scan_image_folder",
    "get_tokenizer",
    "ByteTokenizer",
    "TiktokenTokenizer",
    "TOKENIZERS",
    "IMAGE_DATASETS",
    "DataError",
    "cache_root",
]
