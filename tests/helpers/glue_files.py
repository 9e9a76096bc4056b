"""The files of a GLUE download mirror (zips, the MRPC text files, AX.tsv), for download_glue_data.py tests."""
import io
import zipfile
from typing import Dict

SST_TRAIN = "sentence\tlabel\nit 's a charming journey .\t1\na dull film .\t0\n"
COLA_TRAIN = "gj04\t1\t\tOur friends won't buy this analysis.\n"
MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
               "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")
MSR_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
MSR_TRAIN_ROWS = [("1", "702876", "702977", "Amrozi accused his brother .", "Referring to him as the witness ."),
                  ("0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's ."),
                  ("1", "1330381", "1330521", "They had published an ad .", "On June 10 they published an ad ."),
                  ("0", "3344667", "3344648", "Around 0335 GMT shares were up .", "The stock rose .")]
MSR_TEST_ROWS = [("1", "1089874", "1089925", "PCCW 's chief will also head PCCW .", "Moore will head PCCW .")]
DEV_IDS = "2108705\t2108831\n3344667\t3344648\n"


def make_zip(files: Dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def task_zip(top: str, names=("train.tsv", "dev.tsv", "test.tsv"), train: str = SST_TRAIN) -> bytes:
    return make_zip({f"{top}/{name}": (train if name == "train.tsv" else f"content of {top}/{name}\n")
                     for name in names})


def msr_file(rows) -> str:
    return MSR_HEADER + "".join("\t".join(row) + "\r\n" for row in rows)


def standard_files() -> Dict[str, bytes]:
    mnli_names = ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv", "test_matched.tsv", "test_mismatched.tsv")
    return {
        "CoLA.zip": task_zip("CoLA", train=COLA_TRAIN),
        "SST-2.zip": task_zip("SST-2"),
        "MNLI.zip": task_zip("MNLI", mnli_names, train=MNLI_HEADER),
        "QNLIv2.zip": task_zip("QNLI"),
        "AX.tsv": b"index\tsentence1\tsentence2\n0\ta\tb\n",
        "msr_paraphrase_train.txt": msr_file(MSR_TRAIN_ROWS).encode("utf-8"),
        "msr_paraphrase_test.txt": msr_file(MSR_TEST_ROWS).encode("utf-8"),
        "mrpc_dev_ids.tsv": DEV_IDS.encode("utf-8"),
    }
