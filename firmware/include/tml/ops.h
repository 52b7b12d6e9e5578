/* SPDX-License-Identifier: Apache-2.0 */
/**
 * @file ops.h
 * @brief The TFLite ops this firmware registers, as one X-macro list.
 *
 * X(NAME, Method): NAME as TFLite spells it (reported in the status capabilities and at
 * enrollment), Method the MicroMutableOpResolver member that registers it. The TFLM adapter
 * registers exactly these; the capability list is generated from the same macro, so the two
 * can never differ. Override TML_OPS to change the set.
 */
#ifndef TML_OPS_H
#define TML_OPS_H

#ifndef TML_OPS
#define TML_OPS(X)                                \
    X(ADD, AddAdd)                                \
    X(AVERAGE_POOL_2D, AddAveragePool2D)          \
    X(CONV_2D, AddConv2D)                         \
    X(DEPTHWISE_CONV_2D, AddDepthwiseConv2D)      \
    X(DEQUANTIZE, AddDequantize)                  \
    X(FULLY_CONNECTED, AddFullyConnected)         \
    X(MAX_POOL_2D, AddMaxPool2D)                  \
    X(MEAN, AddMean)                              \
    X(MUL, AddMul)                                \
    X(QUANTIZE, AddQuantize)                      \
    X(RELU, AddRelu)                              \
    X(RESHAPE, AddReshape)                        \
    X(SOFTMAX, AddSoftmax)
#endif

#endif /* TML_OPS_H */
