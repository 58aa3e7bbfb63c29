package app

import (
	"io"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// NewLoggers builds the operational logger and the access logger. Neither
// is sampled: zap's sampler would drop access lines past 100 a second.
// A worker (index >= 0) marks its lines with its index.
func NewLoggers(w io.Writer, format string, level zap.AtomicLevel, worker int) (logger, access *zap.Logger, stop func()) {
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "ts"
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	encCfg.EncodeDuration = zapcore.SecondsDurationEncoder
	var enc zapcore.Encoder
	if format == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		encCfg.EncodeDuration = zapcore.StringDurationEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	out := zapcore.Lock(zapcore.AddSync(w))
	logger = zap.New(zapcore.NewCore(enc, out, level))
	// Access lines are buffered and written at most every 100ms (or per
	// 64 KiB): one write per request would cost a system call per
	// request. Operational messages are written at once. stop flushes.
	//
	// Workers share the output. A write never splits a line, and writes
	// of a worker stay within PIPE_BUF (4 KiB), so that lines written to a
	// pipe by several workers at once are not interleaved.
	size := 64 << 10
	if worker >= 0 {
		size = 4 << 10
	}
	buffered := &zapcore.BufferedWriteSyncer{WS: out, Size: size, FlushInterval: 100 * time.Millisecond}
	access = zap.New(zapcore.NewCore(enc.Clone(), buffered, level)).Named("access")
	if worker >= 0 {
		logger, access = logger.With(zap.Int("worker", worker)), access.With(zap.Int("worker", worker))
	}
	return logger, access, func() { _ = buffered.Stop() }
}
