"""Reading untrusted bytes: tensor files, .pt2 programs and dataset files, parsed and never unpickled."""
