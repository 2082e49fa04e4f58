"""Data: litdata token streams for GPT-2 and litdata image sets for ConvNeXt, with offline built-ins."""

# _common first: it sets LITDATA_DISABLE_VERSION_CHECK before any submodule imports litdata.
from lit_ortho.data._common import DataError, DataWarning, cache_root
from lit_ortho.data.images import (
    IMAGE_CHUNK_BYTES,
    IMAGE_DATASETS,
    ImageDataModule,
    ImageStreamingDataset,
    prepare_builtin_images,
    prepare_images,
    scan_image_folder,
)
from lit_ortho.data.text import TEXT_CHUNK_BYTES, TextDataModule, find_text_files, prepare_embedded_text, prepare_text
from lit_ortho.data.tokenizers import EOT_TEXT, TOKENIZERS, ByteTokenizer, HFTokenizer, TiktokenTokenizer, get_tokenizer

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
    "HFTokenizer",
    "ByteTokenizer",
    "TiktokenTokenizer",
    "TOKENIZERS",
    "IMAGE_DATASETS",
    "ImageStreamingDataset",
    "EOT_TEXT",
    "TEXT_CHUNK_BYTES",
    "IMAGE_CHUNK_BYTES",
    "DataError",
    "DataWarning",
    "cache_root",
]
