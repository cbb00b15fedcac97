"""Exploratory screen (run by hand): which weight MatMuls can dynamic int8 quantize without hurting SmolLM2?

Usage: python screen_int8.py CONFIG[+EXCLUSION],... WINDOWS   (see results.log for what was run)
The choice it led to is what `ort_quantize` does by default; docs/quantization.md explains it.
"""
import re, time, torch, os, sys, shutil, json
torch.set_num_threads(1)
from onnxruntime.quantization import quantize_dynamic, QuantType
import onnx
from optimum.onnxruntime import ORTModelForCausalLM
from compress.recipe import EvaluationData
from compress.evaluate import compare
from transformers import AutoTokenizer
import onnxruntime as ort
# The ORT fp32 export, made with optimum.exporters.onnx.onnx_export_from_model(model, "/tmp/qexp/fp32",
# task="text-generation-with-past") (what `compress export onnx` calls); outputs go beside it.
src="/tmp/qexp/fp32"
tok=AutoTokenizer.from_pretrained(src)
W=EvaluationData(source="/work/shared/data/wikitext-2/wiki.valid.tokens", split="evaluation", windows=int(sys.argv[2]) if len(sys.argv)>2 else 2, seq_len=1024).load(tok)
so=ort.SessionOptions(); so.intra_op_num_threads=1
base=ORTModelForCausalLM.from_pretrained(src, session_options=so)
m=onnx.load(src+"/model.onnx", load_external_data=False)
inits={i.name for i in m.graph.initializer}
proj=[n.name for n in m.graph.node if n.op_type=="MatMul" and any(i in inits for i in n.input)]
print(len(proj))
configs={
 "pc_s8_rr": dict(per_channel=True, reduce_range=True, weight_type=QuantType.QInt8),
 "pc_u8": dict(per_channel=True, reduce_range=False, weight_type=QuantType.QUInt8),
 "pt_u8": dict(per_channel=False, reduce_range=False, weight_type=QuantType.QUInt8),
 "pc_s8": dict(per_channel=True, reduce_range=False, weight_type=QuantType.QInt8),
}
excl={"nodown":r"down_proj","noattn":r"self_attn","nomlp":r"mlp","l0_29":r"layers\.(0|29)/","nodown_l0_29":r"down_proj|layers\.(0|29)/","nodown_o":r"down_proj|o_proj","nd_l01":r"down_proj|layers\.(0|1|28|29)/","nd_l0":r"down_proj|layers\.0/","nd_l29":r"down_proj|layers\.29/"}
for name in sys.argv[1].split(","):
    cfgname,_,ex=name.partition("+")
    nodes=[p for p in proj if not (ex and re.search(excl[ex],p))]
    out=f"/tmp/qexp/{name}"; shutil.rmtree(out, ignore_errors=True); shutil.copytree(src, out, ignore=shutil.ignore_patterns("model.onnx"))
    t=time.time()
    quantize_dynamic(src+"/model.onnx", out+"/model.onnx", op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes, **configs[cfgname])
    qt=time.time()-t
    v=ORTModelForCausalLM.from_pretrained(out, session_options=so)
    t=time.time()
    r=compare(base, v, W)
    print(name, "quant s", round(qt,1), "eval s", round(time.time()-t,1), os.path.getsize(out+"/model.onnx")/1e6, json.dumps(r), flush=True)
