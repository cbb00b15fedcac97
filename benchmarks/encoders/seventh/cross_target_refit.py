"""Experiment: sequential cross-target refit of each encoder layer's output.dense (student inputs, teacher's pre-LN sum as target)."""
import sys, torch
from compress.models import load_artifact
from compress.passes.base import CalibrationData
torch.set_num_threads(2)
teacher = load_artifact("minilm"); student = load_artifact(sys.argv[1]); out = sys.argv[2]
damp = float(sys.argv[3]) if len(sys.argv) > 3 else 0.01
windows = CalibrationData(source="mixed", samples=128, seq_len=256).windows(teacher.tokenizer)
T, S = teacher.model.eval(), student.model.eval()
for i in range(len(S.encoder.layer)):
    cap = {}
    hs = S.encoder.layer[i].output.register_forward_pre_hook(lambda m, a: cap.update(x=a[0].detach(), r=a[1].detach()))
    ht = T.encoder.layer[i].output.LayerNorm.register_forward_pre_hook(lambda m, a: cap.update(t=a[0].detach()))
    k = S.encoder.layer[i].output.dense.in_features
    G = torch.zeros(k + 1, k + 1, dtype=torch.float64); C = None; n = 0
    with torch.no_grad():
        for w in range(len(windows)):
            ids = windows.input_ids[w : w + 1]
            S(input_ids=ids); T(input_ids=ids)
            x = torch.cat([cap["x"].reshape(-1, k), torch.ones(cap["x"].shape[1], 1)], 1).double()
            y = (cap["t"] - cap["r"]).reshape(-1, cap["t"].shape[-1]).double()
            G += x.t() @ x; C = x.t() @ y if C is None else C + x.t() @ y; n += x.shape[0]
    hs.remove(); ht.remove()
    G = G.clone() / n; C = C.clone() / n
    dense = S.encoder.layer[i].output.dense
    w_old = torch.cat([dense.weight.detach().double().t(), dense.bias.detach().double()[None]], 0)  # (k+1, out)
    lam = damp * float(G.diagonal()[:k].mean())
    reg = lam * torch.eye(k + 1, dtype=G.dtype); reg[k, k] = 0
    sol = torch.linalg.solve(G + reg, C + reg @ w_old)
    with torch.no_grad():
        dense.weight.copy_(sol[:k].t().float()); dense.bias.copy_(sol[k].float())
    print("layer", i, "done", flush=True)
from compress.saving import save_artifact
save_artifact(student, out)
