# A model of MIB MiB of float32 weights (one Gather over them, external data) for probe.sh.
import sys, numpy as np, onnx
from onnx import helper, TensorProto, numpy_helper
mib = int(sys.argv[1]); rows = mib * 256  # 1024 floats per row = 4 KiB
W = np.zeros((rows, 1024), np.float32); W[:, 0] = np.arange(rows)
init = numpy_helper.from_array(W, "W")
g = helper.make_graph([helper.make_node("Gather", ["W", "idx"], ["y"], axis=0)], "g",
    [helper.make_tensor_value_info("idx", TensorProto.INT64, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1024])], [init])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 10
onnx.save_model(m, f"m{mib}.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location=f"m{mib}.onnx.data", size_threshold=0)
